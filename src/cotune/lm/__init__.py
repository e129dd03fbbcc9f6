"""One LM interface for every backend, with cache, retries, usage accounting and budgets."""

from cotune.lm.base import LM
from cotune.lm.budget import Budget, budget, use_budget
from cotune.lm.cache import LMCache, LMCacheError, cache_disabled, default_cache_dir
from cotune.lm.description import (
    AdapterFileError,
    GGUFDescription,
    LMDescription,
    OpenAIDescription,
    PoolDescription,
    ScriptedDescription,
)
from cotune.lm.factory import lm_from_description
from cotune.lm.llama_server import LlamaServer, LlamaServerError
from cotune.lm.llama_server_lm import LlamaServerLM
from cotune.lm.llamacpp import LlamaCppLM
from cotune.lm.models import list_models, resolve_model_path
from cotune.lm.openai_backend import OpenAILM  # imports the openai SDK only when constructed
from cotune.lm.pool import EndpointPool
from cotune.lm.scripted import ScriptedLM
from cotune.lm.types import (
    BudgetExceeded,
    Choice,
    ContentRefused,
    ContextOverflow,
    LMError,
    LMInvalidResponse,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    TokenUsage,
    is_infrastructure_error,
)
from cotune.lm.usage import UsageMeter, UsageSnapshot, track_usage

__all__ = [
    "LM",
    "AdapterFileError",
    "Budget",
    "BudgetExceeded",
    "Choice",
    "ContentRefused",
    "ContextOverflow",
    "EndpointPool",
    "GGUFDescription",
    "LMCache",
    "LMCacheError",
    "LMDescription",
    "LMError",
    "LMInvalidResponse",
    "LMRequest",
    "LMRequestError",
    "LMResponse",
    "LMTransientError",
    "LlamaCppLM",
    "LlamaServer",
    "LlamaServerError",
    "LlamaServerLM",
    "OpenAIDescription",
    "OpenAILM",
    "PoolDescription",
    "ScriptedDescription",
    "ScriptedLM",
    "TokenUsage",
    "UsageMeter",
    "UsageSnapshot",
    "budget",
    "cache_disabled",
    "default_cache_dir",
    "is_infrastructure_error",
    "list_models",
    "lm_from_description",
    "resolve_model_path",
    "track_usage",
    "use_budget",
]
