from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclegan.config import (
    CHANNELS_LAST_BELOW_BATCH,
    CUDNN_BENCHMARK_FROM_BATCH,
    FIELD_NAMES,
    ConfigError,
    TrainConfig,
    parse_overrides,
)
from tests.badfiles import set_items


def test_defaults_are_the_studys_v4():
    c = TrainConfig()
    assert (c.resize, c.batch_size, c.unet_depth, c.disc_layers, c.epochs) == (256, 2, 8, 3, 100)
    assert (c.lambda_cycle, c.lambda_identity, c.lambda_disc, c.lr) == (10.0, 0.5, 0.5, 2e-4)


def test_round_trip_through_dict_and_file(tmp_path):
    c = TrainConfig(resize=64, unet_depth=6, lr=1e-3, gan_loss="bce", upsample="resize", compile=True)
    assert TrainConfig.from_dict(c.to_dict()) == c
    c.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == c


def test_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().resize = 3  # type: ignore[misc]


@pytest.mark.parametrize("values,match", [
    ({"learning_rate": 1e-3}, "unknown key 'learning_rate'"),
    ({"resize": "256"}, "resize='256' has the wrong type: expected int"),
    ({"resize": 256.0}, "expected int"),
    ({"compile": 1}, "compile=1 has the wrong type: expected bool"),
    ({"cuda_graphs": "yes"}, "cuda_graphs='yes' has the wrong type: expected bool"),
    ({"fused_adam": 0}, "fused_adam=0 has the wrong type: expected bool"),
    ({"unet_depth": 9}, r"unet_depth=9 needs resize >= 2\*\*9 = 512"),
    ({"resize": 32, "unet_depth": 5, "disc_layers": 4}, r"disc_layers=4 needs resize >= 4 \* 2\*\*4 = 64"),
    ({"gan_loss": "wgan"}, r"gan_loss='wgan' is not allowed; expected one of \['lsgan', 'bce'\]"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"lr_d_scale": 0.0}, "lr_d_scale must be > 0"),
    ({"generator": "resnet"}, r"generator='resnet' is not allowed; expected one of \['unet', 'resnet_9blocks'"),
    ({"generator": "resnet_9blocks", "resize": 66}, "generator='resnet_9blocks' needs resize divisible by 4, got "
                                                    "resize=66; use resize=64 or 68"),
])
def test_refusals_name_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(values)


def test_the_unet_depth_rule_binds_only_the_unet():
    """A ResNet halves the image twice whatever unet_depth says: 68 is fine for it, not for a U-Net of depth 8."""
    assert TrainConfig(generator="resnet_6blocks", resize=68).resize == 68
    with pytest.raises(ConfigError, match="unet_depth=8 needs resize >= 2"):
        TrainConfig(generator="unet", resize=68)


def test_overrides_type_themselves():
    assert parse_overrides(["lr=1e-4", "resize=64", "compile=true", "gan_loss=bce", "lambda_cycle=5"]) == {
        "lr": 1e-4, "resize": 64, "compile": True, "gan_loss": "bce", "lambda_cycle": 5.0}


@pytest.mark.parametrize("item,match", [("resize", "expected key=value"), ("size=3", "unknown key 'size'"),
                                        ("resize=big", "expected int"), ("lr=fast", "expected float")])
def test_override_refusals(item, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides([item])


def test_field_names_include_the_design_contract():
    for name in ("resize", "batch_size", "unet_depth", "disc_layers", "epochs", "lr", "lambda_cycle",
                 "lambda_identity", "gan_loss", "upsample"):
        assert name in FIELD_NAMES


def test_the_fast_path_is_the_default_and_each_switch_turns_off():
    c = TrainConfig()
    assert (c.precision, c.channels_last, c.fused_adam, c.cuda_graphs, c.fused_norm, c.cudnn_benchmark,
            c.stacked_passes, c.compile) == ("auto", "auto", True, True, True, "auto", True, False)
    eager = TrainConfig.from_dict({"precision": "fp32", "channels_last": False, "fused_adam": False,
                                   "cuda_graphs": False, "fused_norm": False, "stacked_passes": False})
    assert parse_overrides(["cuda_graphs=false", "fused_adam=false"]) == {"cuda_graphs": False, "fused_adam": False}
    assert TrainConfig.from_dict(eager.to_dict()) == eager


def test_cudnn_benchmark_auto_times_the_algorithms_from_its_batch_up_and_true_or_false_force_it():
    assert not TrainConfig(batch_size=CUDNN_BENCHMARK_FROM_BATCH - 1).use_cudnn_benchmark
    assert TrainConfig(batch_size=CUDNN_BENCHMARK_FROM_BATCH).use_cudnn_benchmark
    assert TrainConfig(batch_size=1, cudnn_benchmark=True).use_cudnn_benchmark
    assert not TrainConfig(batch_size=64, cudnn_benchmark=False).use_cudnn_benchmark
    assert parse_overrides(["cudnn_benchmark=auto"]) == {"cudnn_benchmark": "auto"}
    with pytest.raises(ConfigError, match="cudnn_benchmark='yes' is not allowed; expected true, false or 'auto'"):
        TrainConfig(cudnn_benchmark="yes")


def test_channels_last_auto_is_on_with_the_fused_norm_else_follows_the_batch_and_true_or_false_force_it():
    assert TrainConfig(batch_size=2).use_channels_last
    assert TrainConfig(batch_size=32).use_channels_last  # the fused norm keeps NHWC: no copies to pay for
    assert TrainConfig(batch_size=2, fused_norm=False).use_channels_last
    assert not TrainConfig(batch_size=CHANNELS_LAST_BELOW_BATCH, fused_norm=False).use_channels_last
    assert TrainConfig(batch_size=32, channels_last=True).use_channels_last
    assert not TrainConfig(batch_size=1, channels_last=False).use_channels_last
    assert parse_overrides(["channels_last=auto"]) == {"channels_last": "auto"}
    with pytest.raises(ConfigError, match="channels_last='nhwc' is not allowed"):
        TrainConfig(channels_last="nhwc")


# --- anything a user can type after --set ---------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.lists(set_items, min_size=1, max_size=4))
def test_any_set_values_give_a_config_or_one_config_error(items: list[str]) -> None:
    # What both CLIs do with --set: parse the strings, then build the config. Only ConfigError, in one line, may
    # come out; anything else would reach the user as a traceback.
    try:
        config = TrainConfig().replace(**parse_overrides(items))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert all(math.isfinite(v) for v in config.to_dict().values() if isinstance(v, float))


@pytest.mark.parametrize("item,match", [
    ("epochs=2024-13-45", "epochs='2024-13-45' has the wrong type"),
    ("lr=1" + "0" * 400, "lr must be a finite number, got inf"),
    ("lr=.nan", "lr must be a finite number, got nan"),
    ("lambda_identity=-.inf", "lambda_identity must be a finite number"),
    ("unet_depth=1000000000", r"unet_depth=1000000000 needs resize >= 2\*\*1000000000, got resize=256"),
    ("seed=-1", "seed must be >= 0"),
    ("seed=4294967296", r"seed must be < 2\*\*32"),
    ("resize=" + "[" * 2000, "has the wrong type: expected int, got str"),
    ("epochs=-0x" + "f" * 5000, "epochs must be >= 1, got <an int of 20000 bits>"),
], ids=lambda x: x[:24] if isinstance(x, str) else None)
def test_set_values_the_fuzzer_found(item: str, match: str) -> None:
    # Each of these once escaped as a ValueError, an OverflowError, a hang or a silently accepted NaN.
    with pytest.raises(ConfigError, match=match):
        TrainConfig().replace(**parse_overrides([item]))


@pytest.mark.parametrize("values", [[1, 2], "resize", None, [["lr", 1]]])
def test_a_config_that_is_not_a_mapping_is_refused(values: object) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of knobs"):
        TrainConfig.from_dict(values)  # type: ignore[arg-type]
