"""Gateway side: round coordination, homomorphic sums, the Paillier private key."""
