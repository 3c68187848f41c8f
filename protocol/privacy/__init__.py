"""The privacy maths: device-level distributed DP noise, its accounting, and the announced terms.

Pure apart from ``accounting``'s ledger format (bytes in, bytes out; the caller does the I/O).
``noise`` draws each device's integer discrete-Gaussian share (ddg/1), ``accounting`` composes
what a run spent with Google's dp-accounting (RDP), ``terms`` is what a fleet announces with
its public key and what a device checks before it adds any noise.
"""
