"""Model loading: where a MODEL argument points, and the runners that use it."""
