"""Training: one loop for a laptop CPU and each Ray Train worker (`loop`), and the GPU switches (`accelerate`)."""
