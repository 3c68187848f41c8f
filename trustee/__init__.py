"""A trustee: holds one share of the fleet's Paillier key and decrypts only sums it verified."""
