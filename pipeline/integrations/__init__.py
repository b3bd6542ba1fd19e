"""tansaku.pipeline.integrations: tansaku inside other frameworks and over HTTP.

- :mod:`.backends`: the one seam (``SearchBackend``/``RerankBackend``) that every adapter
  and the remote client share: an index directory, an opened Searcher, or a server URL;
- :mod:`.client`: the HTTP client for ``tansaku serve``;
- :mod:`.langchain` and :mod:`.llamaindex`: retrievers and rerankers for those frameworks
  (optional extras ``tansaku[langchain]`` / ``tansaku[llamaindex]``; import them directly).
"""
