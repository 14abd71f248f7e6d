"""Search backends (the interface is zs_ray.core.search): the Serve simulator client, external HTTP simulators
and retrievers, BM25 over a local corpus (retrieval), and the hybrid of a simulator and a real search."""
