"""pipeline.yaml -> typed models, with validation that names locations."""

from raw2gold.config.loader import (
    ConfigError,
    Problem,
    gold_order,
    load_pipeline,
    load_pipelines,
    load_valid_pipelines,
    model_refs,
    pipeline_files,
    resolve_env,
    resolve_env_tree,
)
from raw2gold.config.models import (
    CheckConfig,
    GoldModel,
    LakeConfig,
    PipelineConfig,
    ProcessedModel,
    SourceConfig,
    StreamConfig,
)

__all__ = [
    "CheckConfig",
    "ConfigError",
    "GoldModel",
    "LakeConfig",
    "PipelineConfig",
    "Problem",
    "pipeline_files",
    "ProcessedModel",
    "SourceConfig",
    "StreamConfig",
    "gold_order",
    "load_pipeline",
    "load_pipelines",
    "load_valid_pipelines",
    "model_refs",
    "resolve_env",
    "resolve_env_tree",
]
