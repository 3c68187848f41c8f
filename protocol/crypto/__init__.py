"""The cryptography of an update: Paillier, obfuscators, slot packing, codecs, signatures.

Pure: raw integers and bytes in, raw integers and bytes out; nothing here touches a file or
a socket, and nothing here imports the rest of ``protocol`` but its errors. Read it bottom-up:
``paillier`` (raw encryption and CRT decryption over ``phe``), ``obfuscation`` (the r^n mod n^2
half of encryption), ``packing`` (many slots in one plaintext), ``codec`` (floats <-> bounded
fixed-point slots), ``signing`` (Ed25519 over every message). How an update's sections use
these is ``protocol.layout``, above this group, beside the privacy and sums groups it also uses.
"""
