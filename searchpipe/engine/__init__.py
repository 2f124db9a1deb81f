"""Scale-out engines for batch jobs: the shard files they share (``engine.shards``) and the Ray
actor pool that runs them, embedding or searching (``engine.ray_jobs``; imports Ray only when used)."""
