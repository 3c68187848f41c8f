"""Device side: local data, local training, the round loop. Installs without broker deps."""
