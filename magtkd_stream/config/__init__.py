"""Typed configuration, one owner: every section of a profile is a dataclass built by one loader.

checks:  ConfigError and the checks that name the full dotted key.
model:   encoders (text, audio, video, ASR), MAGT, knowledge distillation.
train:   the training recipe (both stages).
stream:  the service (actor resources, batching, VAD, window, fault handling).
gateway: the websocket gateway (address, tokens, TLS, origins, limits), under stream.gateway.
profile: Config, the whole tree.
loader:  YAML files, `base:` inheritance, --set overrides, the config folder.
"""

from magtkd_stream.config.checks import ConfigError
from magtkd_stream.config.gateway import GatewayConfig, TokenSpec
from magtkd_stream.config.loader import (
    CONFIG_DIR,
    RECIPE_PREFIX,
    apply_override,
    available_configs,
    config_from_dict,
    config_to_dict,
    load_config,
    read_config_tree,
    read_yaml,
)
from magtkd_stream.config.model import (
    ASRConfig,
    AudioEncoderConfig,
    EncodersConfig,
    KDConfig,
    MAGTConfig,
    TextEncoderConfig,
    VideoEncoderConfig,
)
from magtkd_stream.config.profile import Config
from magtkd_stream.config.stream import ACTOR_NAMES, ActorResources, DiarizeConfig, StreamConfig, VADConfig
from magtkd_stream.config.train import SELECT_METRICS, Stage1Config, Stage2Config, StageConfig, TrainConfig

__all__ = [
    "ACTOR_NAMES", "ASRConfig", "ActorResources", "AudioEncoderConfig", "CONFIG_DIR", "Config", "ConfigError", "DiarizeConfig",
    "EncodersConfig", "GatewayConfig", "TokenSpec", "KDConfig", "MAGTConfig", "RECIPE_PREFIX", "SELECT_METRICS", "Stage1Config", "Stage2Config",
    "StageConfig", "StreamConfig", "TextEncoderConfig", "TrainConfig", "VADConfig", "VideoEncoderConfig",
    "apply_override", "available_configs", "config_from_dict", "config_to_dict", "load_config", "read_config_tree",
    "read_yaml",
]
