"""Fleet sums: what a device adds to its update so that only the fleet's total tells something.

``statistics`` holds the exact integer sums of local data that pool into the fleet's scaler
(round 0); ``evaluation`` holds the sums a fleet metric needs (loss, confusion, residuals),
summed under encryption and turned into a metric only from the decrypted total.
"""
