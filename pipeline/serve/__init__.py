"""tansaku.pipeline.serve: the HTTP server behind ``tansaku serve``."""

from .app import ApiError, InferenceQueue, RerankService, create_app, limit_torch_threads

__all__ = ["ApiError", "InferenceQueue", "RerankService", "create_app", "limit_torch_threads"]
