"""The method's math (method notes sections 1-8): interpolants, the mapping r(s, t), the weighting w(s, t) and the time
distribution p(s, t), kernels and the grouped MMD estimators."""
