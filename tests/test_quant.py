"""Quantization core: quantizers on the grid, STE, policies, QAT models (stages, folding, saving),
MRACos, and one int8 LiteRT conversion with 4-bit weights."""
import edgeasr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import json
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from edgeasr.configs import from_dict, to_dict
from edgeasr.converters.stock import per_channel_dense_baked
from edgeasr.converters.flatbuffer import read_model, unpack_int4
from edgeasr.errors import EdgeasrError
from edgeasr.models.registry import ModelConfig, build_model
from edgeasr.quant import qat
from edgeasr.quant.mracos import add_mracos, mracos_loss, mracos_penalty
from edgeasr.quant.policy import (LayerPrecision, PrecisionPolicy, PrecisionRule, known_presets,
                                  preset)
from edgeasr.quant.quantizers import (ActivationQuantizer, LinearWeightQuantizer, TanhWeightQuantizer,
                                      custom_objects, top_level)
from edgeasr.train.fit import saved_model
from edgeasr.train.run_dir import RunDir

FRAMES, MELS, CLASSES = 98, 40, 12


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, FRAMES, MELS)).astype(np.float32), rng.integers(0, CLASSES, n)


def _fit(model, steps=4, batch=16, seed=0):
    x, y = _data(steps * batch, seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return model


def _small_ds_cnn():
    return build_model(ModelConfig(name="ds_cnn_s", options={"channels": 16, "blocks": 1}))


def _columns(weight, depthwise=False):
    """One column per output channel (depthwise: in * multiplier channels)."""
    return weight.reshape(-1, weight.shape[-2] * weight.shape[-1]) if depthwise else weight.reshape(-1, weight.shape[-1])


def assert_on_grid(weight, bits, per_channel=True, depthwise=False):
    """Each channel: values k * step with integer |k| <= 2^(n-1) - 1, at most 2^n - 1 distinct values,
    the top level used (the range is max|w|)."""
    top = top_level(bits)
    columns = _columns(weight, depthwise) if per_channel else weight.reshape(-1, 1)
    for c in range(columns.shape[1]):
        values = columns[:, c].astype(np.float64)
        peak = np.abs(values).max()
        assert len(np.unique(values)) <= 2 ** bits - 1
        if peak == 0:
            continue
        k = values / (peak / top)
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)
        levels = np.round(k)
        assert np.abs(levels).max() == top
        assert levels.min() >= -top and levels.max() <= top
        # one float value per integer level, and a level and its negation are mirror images
        assert len(np.unique(levels)) == len(np.unique(values))
        for level in np.unique(levels):
            mirrored = values[levels == -level]
            if mirrored.size:
                np.testing.assert_allclose(-mirrored[0], values[levels == level][0], rtol=1e-5)


# --- quantizers --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LinearWeightQuantizer, TanhWeightQuantizer])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_quantizers_land_on_the_grid(cls, bits):
    rng = np.random.default_rng(bits)
    conv = tf.constant(rng.normal(scale=0.3, size=(3, 3, 8, 16)).astype(np.float32))
    assert_on_grid(cls(bits, per_channel=True).quantize(conv).numpy(), bits)
    assert_on_grid(cls(bits, per_channel=False).quantize(conv).numpy(), bits, per_channel=False)
    depthwise = tf.constant(rng.normal(scale=2.0, size=(3, 3, 8, 2)).astype(np.float32))
    out = cls(bits, per_channel=True, depthwise=True).quantize(depthwise).numpy()
    assert out.shape == (3, 3, 8, 2)
    assert_on_grid(out, bits, depthwise=True)
    per_tensor = cls(bits, per_channel=False, depthwise=True).quantize(depthwise, np.linspace(0.5, 2, 16)).numpy()
    assert per_tensor.shape == (3, 3, 8, 2)
    assert_on_grid(per_tensor, bits, per_channel=False)
    gain = rng.uniform(-3, 3, size=16).astype(np.float32)       # a folded BN gain, signs included
    folded = cls(bits).quantize(conv, gain).numpy()
    assert_on_grid(folded, bits)
    # per channel, locking commutes with the gain: folded == quantized * gain
    np.testing.assert_allclose(folded, cls(bits).quantize(conv).numpy() * gain, rtol=1e-5, atol=1e-7)


def test_tanh_keeps_the_output_scale_and_is_linear_for_small_weights():
    rng = np.random.default_rng(1)
    large = tf.constant(rng.normal(scale=1.5, size=(64, 32)).astype(np.float32))
    q = TanhWeightQuantizer(8, per_channel=True).quantize(large).numpy()
    rms_ratio = np.sqrt((q ** 2).mean(axis=0)) / np.sqrt((large.numpy() ** 2).mean(axis=0))
    np.testing.assert_allclose(rms_ratio, 1.0, atol=0.02)
    small = tf.constant(rng.normal(scale=0.01, size=(64, 32)).astype(np.float32))
    np.testing.assert_allclose(TanhWeightQuantizer(4).quantize(small).numpy(),
                               LinearWeightQuantizer(4).quantize(small).numpy(), atol=1e-4)


def test_an_all_zero_channel_still_learns_and_a_vector_is_one_channel():
    """A zero-initialised layer under the tanh quantizer had a gradient of exactly 0 (0 / 0 became
    0), so it never left zero; and a 1-D weight 'per channel' gave every value its own grid."""
    w = tf.Variable(np.concatenate([np.zeros((6, 1)), np.linspace(-1, 1, 6)[:, None]], axis=1).astype(np.float32))
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(TanhWeightQuantizer(4).quantize(w))
    grad = tape.gradient(out, w).numpy()
    np.testing.assert_allclose(grad[:, 0], 1.0)                          # tanh(w) ~ w near zero
    assert np.all(grad[1:-1, 1] > 0)                                     # (the STE stops at the ends)
    vector = tf.constant(np.linspace(-1, 1, 11).astype(np.float32))
    for cls in (LinearWeightQuantizer, TanhWeightQuantizer):
        quantized = cls(2, per_channel=True).quantize(vector).numpy()
        np.testing.assert_array_equal(quantized, cls(2, per_channel=False).quantize(vector).numpy())
        assert len(np.unique(quantized)) == 3                             # 2 bits: -m, 0, m


def test_ste_passes_gradients_through_the_quantizers():
    rng = np.random.default_rng(2)
    w = tf.Variable(rng.normal(size=(5, 5, 4, 8)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(5, 5, 4, 8)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        linear = tf.reduce_sum(LinearWeightQuantizer(4).quantize(w) * upstream)
        tanh = tf.reduce_sum(TanhWeightQuantizer(4).quantize(w) * upstream)
    np.testing.assert_allclose(tape.gradient(linear, w).numpy(), upstream.numpy(), rtol=1e-6)
    grad = tape.gradient(tanh, w).numpy()
    assert np.isfinite(grad).all() and np.all(grad != 0)
    # d/dw = s * (1 - tanh(w)^2) / max|tanh|: same sign as the upstream gradient
    assert np.all(np.sign(grad) == np.sign(upstream.numpy()))


def test_activation_quantizer_options_and_config():
    assert ActivationQuantizer(16).get_config() == {"bits": 16, "decay": 0.99}
    assert ActivationQuantizer.from_config(ActivationQuantizer(8).get_config()) == ActivationQuantizer(8)
    with pytest.raises(EdgeasrError):
        ActivationQuantizer(4)
    with pytest.raises(EdgeasrError):
        LinearWeightQuantizer(9)
    assert TanhWeightQuantizer.from_config(TanhWeightQuantizer(3, False).get_config()) == TanhWeightQuantizer(3, False)


# --- policies ----------------------------------------------------------------------------------
def test_policy_patterns_first_match_wins_and_json_round_trip():
    policy = PrecisionPolicy("p", LayerPrecision(4, "tanh"), [
        PrecisionRule("conv0", LayerPrecision(8)),
        PrecisionRule("dw*", LayerPrecision(2, granularity="per-tensor")),
        PrecisionRule("dw1", LayerPrecision(6)),            # shadowed by dw*
    ])
    assert policy.resolve("conv0").weight_bits == 8
    assert policy.resolve("dw1") == LayerPrecision(2, granularity="per-tensor")
    assert policy.resolve("pw1") == LayerPrecision(4, "tanh")
    restored = from_dict(PrecisionPolicy, json.loads(json.dumps(to_dict(policy))))
    assert restored == policy and isinstance(restored.rules[0], PrecisionRule)


def test_16bit_activations_are_refused_where_the_converter_cannot_give_them():
    from edgeasr.quant.policy import check_16bit_activations

    everywhere = PrecisionPolicy("a16", LayerPrecision(8, activation_bits=16))
    check_16bit_activations(everywhere, post_training=True)                  # the 16x8 mode
    with pytest.raises(EdgeasrError, match="convert only post-training"):
        check_16bit_activations(everywhere, post_training=False)
    some = PrecisionPolicy("some", LayerPrecision(8), [PrecisionRule("pw1", LayerPrecision(8, activation_bits=16))])
    for post_training in (True, False):
        with pytest.raises(EdgeasrError, match="16-bit activations, but not for default;"):
            check_16bit_activations(some, post_training)
    with pytest.raises(EdgeasrError, match="but not for conv0, relu0;"):
        check_16bit_activations(some, True, layer_names=["conv0", "relu0", "pw1"])
    every = PrecisionPolicy("every", LayerPrecision(8), [PrecisionRule("*", LayerPrecision(8, activation_bits=16))])
    check_16bit_activations(every, True, layer_names=["conv0", "relu0", "pw1"])       # the rule covers them all
    unquantized = PrecisionPolicy("none", LayerPrecision(8, activation_bits=16),
                                  [PrecisionRule("logits", LayerPrecision(8, activation_bits=None))])
    with pytest.raises(EdgeasrError, match="but not for logits"):
        check_16bit_activations(unquantized, True, layer_names=["conv0", "logits"])
    for name in ("w8a8", "w4a8-tanh", "mixed"):
        check_16bit_activations(preset(name), post_training=False)


def test_a_policy_file_is_read_whatever_its_extension(tmp_path, monkeypatch):
    from edgeasr.quant.policy import load_policy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "float").write_text(json.dumps(to_dict(preset("w4a8-tanh"))))     # a file named like a preset
    assert load_policy("float") == preset("float")

    policy = PrecisionPolicy("mine", LayerPrecision(4, "tanh"), [PrecisionRule("conv0", LayerPrecision(8))])
    for name in ("policy.JSON", "policy"):
        (tmp_path / name).write_text(json.dumps(to_dict(policy)))
        assert load_policy(str(tmp_path / name)) == policy
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EdgeasrError, match="list.json: a policy file holds one JSON object .* not a list"):
        load_policy(str(tmp_path / "list.json"))
    with pytest.raises(EdgeasrError, match="unknown precision preset"):
        load_policy(str(tmp_path / "missing"))                           # no such file: a preset name


def test_presets():
    assert known_presets() == ["float", "w8a8", "w4a8", "w4a8-tanh", "mixed", "w4a8-tanh-dw8", "conformer-mixed"]
    assert preset("float").is_float
    mixed = preset("mixed")
    for name in ("conv0", "dense1", "logits"):
        assert mixed.resolve(name) == LayerPrecision(8, "linear", "per-channel", 8)
    for name in ("dw1", "pw4", "dense2"):
        assert mixed.resolve(name) == LayerPrecision(4, "tanh", "per-channel", 8)
    dw8 = preset("w4a8-tanh-dw8")
    assert [dw8.resolve(name).weight_bits for name in ("conv0", "dw1", "dw4", "pw1", "logits")] == [8, 8, 8, 4, 4]
    with pytest.raises(EdgeasrError, match="w4a8-tanh"):
        preset("int3")
    with pytest.raises(EdgeasrError, match="weight_bits"):
        LayerPrecision(weight_bits=12)
    with pytest.raises(EdgeasrError, match="weight_transform"):
        from_dict(PrecisionPolicy, {"default": {"weight_transform": "log"}})


# --- QAT models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_w4_tanh():
    """DS-CNN-S, one-stage w4a8-tanh QAT, a few training steps on random data."""
    keras.utils.set_random_seed(0)
    float_model = build_model(ModelConfig(name="ds_cnn_s"))
    model = qat.quantize_model(float_model, "w4a8-tanh", stage="full")
    moving_mean = model.get_layer("pw2").moving_mean.numpy().copy()
    _fit(model, steps=4)
    assert not np.allclose(model.get_layer("pw2").moving_mean.numpy(), moving_mean)  # BN statistics trained
    return model


def test_qat_weights_are_folded_and_on_the_grid_after_training(trained_w4_tanh):
    weights = qat.effective_weights(trained_w4_tanh)
    assert sorted(weights) == sorted(["conv0", "logits"] + [f"{k}{i}" for k in ("dw", "pw") for i in range(1, 5)])
    for name, weight in weights.items():
        assert_on_grid(weight, 4, depthwise=name.startswith("dw"))
    folded = trained_w4_tanh.get_layer("pw1")
    np.testing.assert_allclose(  # the folded weight is the quantized kernel times the BN gain
        weights["pw1"], TanhWeightQuantizer(4).quantize(folded.kernel).numpy() * folded.gain().numpy(), rtol=1e-5)


def test_mixed_policy_on_the_ffn():
    model = _fit(qat.quantize_model(build_model(ModelConfig(name="ffn_stateless")), "mixed"), steps=2)
    weights = qat.effective_weights(model)
    for name, bits in (("dense1", 8), ("dense2", 4), ("dense3", 4), ("logits", 8)):
        assert_on_grid(weights[name], bits)
    assert len(np.unique(weights["dense1"])) > 15


def test_dense_kernels_follow_the_policy_granularity():
    """Per output unit by default, one grid for the whole kernel on request."""
    for granularity in ("per-channel", "per-tensor"):
        policy = PrecisionPolicy("w4", LayerPrecision(4, granularity=granularity))
        model = qat.quantize_model(build_model(ModelConfig(name="ffn_stateless", options={"units": 32})), policy)
        [dense2] = [entry for entry in qat.weight_quantizers(model) if entry["layer"] == "dense2"]
        assert dense2["quantizer"].per_channel == (granularity == "per-channel")
        weight = dense2["effective"]().numpy()
        assert_on_grid(weight, 4, per_channel=granularity == "per-channel")
        unit_peaks = np.abs(weight).max(axis=0)       # per channel: every unit reaches its own top level
        assert (len(np.unique(unit_peaks)) > 16) == (granularity == "per-channel")


def _ffn_w4(granularity: str) -> keras.Model:
    model = build_model(ModelConfig(name="ffn_stateless", options={"units": 32}))
    return qat.quantize_model(model, PrecisionPolicy("w4", LayerPrecision(4, granularity=granularity)))


def _trained_and_rebuilt(x) -> tuple:
    """A per-tensor QAT FFN and the same weights rebuilt from a policy that now reads per channel."""
    trained, rebuilt = _ffn_w4("per-tensor"), _ffn_w4("per-channel")
    trained(x, training=True)                           # ranges initialised, then shared
    qat.transfer_weights(trained, rebuilt)
    return trained, rebuilt


def test_a_rebuilt_model_adopts_the_weight_quantizers_it_was_trained_with():
    """A run trained with per-tensor Dense kernels, rebuilt from a policy that now reads per channel
    (converters/asr.py rebuilds for a fixed window), computes as it was trained."""
    x, _ = _data(8)
    trained, rebuilt = _trained_and_rebuilt(x)
    expected = trained(x, training=False).numpy()
    assert np.abs(rebuilt(x, training=False).numpy() - expected).max() > 0
    assert qat.adopt_weight_quantizers(trained, rebuilt) == 4            # dense1-3 and logits
    np.testing.assert_array_equal(rebuilt(x, training=False).numpy(), expected)
    assert not any(entry["quantizer"].per_channel for entry in qat.weight_quantizers(rebuilt))


def test_a_finished_run_is_evaluated_from_its_file_not_from_its_rebuilt_model(tmp_path):
    """`edgeasr train` on a finished run rebuilds its stage models from the policy; the model it
    scores must be the one in model.keras, which kept the quantizers its weights were trained on."""
    x, _ = _data(8)
    trained, rebuilt = _trained_and_rebuilt(x)
    run = RunDir(tmp_path)
    trained.save(run.model_path)
    saved_bytes = run.model_path.read_bytes()
    evaluated = saved_model(run, rebuilt, trained=False)
    assert run.model_path.read_bytes() == saved_bytes
    np.testing.assert_array_equal(evaluated(x, training=False).numpy(), trained(x, training=False).numpy())
    assert np.abs(rebuilt(x, training=False).numpy() - trained(x, training=False).numpy()).max() > 0
    assert saved_model(run, rebuilt, trained=True) is rebuilt
    assert run.model_path.read_bytes() != saved_bytes


def test_qat_gradients_reach_every_trainable_variable():
    model = qat.quantize_model(_small_ds_cnn(), "w4a8-tanh")
    x, y = _data(8)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert len(grads) == len(model.trainable_variables) > 0
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None and float(tf.norm(grad)) > 0, variable.name


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_qat_model_saves_and_loads_with_identical_outputs(trained_w4_tanh, tmp_path, suffix):
    x, _ = _data(4, seed=5)
    path = tmp_path / f"qat{suffix}"
    trained_w4_tanh.save(path)
    loaded = qat.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained_w4_tanh.predict(x, verbose=0))
    again = keras.models.load_model(path, custom_objects=custom_objects())
    assert [type(layer).__name__ for layer in again.layers] == [type(layer).__name__ for layer in trained_w4_tanh.layers]


def test_two_stage_schedule_switches_what_is_quantized():
    keras.utils.set_random_seed(1)
    float_model = _small_ds_cnn()
    float_kernel = float_model.get_layer("conv0").kernel.numpy().copy()
    policy = preset("w4a8-tanh")
    stage1 = qat.stage_model(float_model, policy, "weights")
    floats0, _ = qat.variable_map(float_model)
    floats1, _ = qat.variable_map(stage1)
    assert set(floats0) == set(floats1)                       # quantize_model copied every float weight
    for key in floats0:
        np.testing.assert_array_equal(floats0[key].numpy(), floats1[key].numpy())
    assert qat.activation_quantizers(stage1) == []
    assert {type(layer).__name__ for layer in stage1.layers} >= {"BatchNormalization", "QuantizeWrapperV2"}
    assert sorted(e["layer"] for e in qat.weight_quantizers(stage1)) == ["conv0", "dw1", "logits", "pw1"]
    _fit(stage1, steps=2)
    np.testing.assert_array_equal(float_model.get_layer("conv0").kernel.numpy(), float_kernel)  # float untouched

    stage2 = qat.stage_model(float_model, policy, "full", init_from=stage1)
    assert qat.activation_quantizers(stage2) == ["quantize_features", "relu0", "relu_dw1", "relu_pw1", "logits"]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in stage2.layers)
    floats1, _ = qat.variable_map(stage1)
    floats2, quants2 = qat.variable_map(stage2)
    assert set(floats1) == set(floats2)
    for key in floats1:
        np.testing.assert_array_equal(floats1[key].numpy(), floats2[key].numpy())

    # Folding is exact: with float activations, stage 2 computes what stage 1 computes in inference.
    weights_only = PrecisionPolicy("w4-tanh", LayerPrecision(4, "tanh", activation_bits=None))
    folded = qat.stage_model(float_model, weights_only, "full", init_from=stage1)
    x, _ = _data(4, seed=3)
    np.testing.assert_allclose(folded(x, training=False).numpy(), stage1(x, training=False).numpy(), atol=1e-5)

    # Stage 2 trains (batch statistics, then frozen ones) and its weights go back to a float model.
    _fit(stage2, steps=1)
    assert float(quants2[("quant", "relu0", "output_max")].numpy()) != 6.0   # ranges trained
    assert qat.freeze_batch_norm(stage2) == 3
    moving_mean = stage2.get_layer("pw1").moving_mean.numpy().copy()
    _fit(stage2, steps=1)
    np.testing.assert_array_equal(stage2.get_layer("pw1").moving_mean.numpy(), moving_mean)
    back = _small_ds_cnn()
    qat.transfer_weights(stage2, back)
    np.testing.assert_array_equal(back.get_layer("bn_pw1").moving_mean.numpy(), moving_mean)


def test_stage_two_peak_learning_rate_is_a_share_of_stage_one():
    from edgeasr.train.fit import plan_stages, stage_learning_rate
    from edgeasr.train.run_dir import RunConfig, TrainConfig

    training = TrainConfig(learning_rate=1e-3, stages=2, stage2_lr_scale=0.1)
    stages = plan_stages(RunConfig(train=training, policy=preset("w4a8-tanh")))
    assert [stage.name for stage in stages] == ["stage1", "stage2"]
    assert [stage_learning_rate(training, stage) for stage in stages] == pytest.approx([1e-3, 1e-4])
    one_stage = TrainConfig(learning_rate=1e-3, stages=1)
    (only,) = plan_stages(RunConfig(train=one_stage, policy=preset("w4a8-tanh")))
    assert stage_learning_rate(replace(one_stage, stage2_lr_scale=0.1), only) == pytest.approx(1e-3)


def test_frozen_bn_epochs_are_the_last_epochs_of_quantized_stages_only():
    from edgeasr.train.fit import frozen_bn_segments, plan_stages
    from edgeasr.train.run_dir import RunConfig, TrainConfig

    assert frozen_bn_segments(6, 0) == [(6, False)]
    assert frozen_bn_segments(6, 2) == [(4, False), (6, True)]
    assert frozen_bn_segments(6, 6) == [(6, True)]
    training = TrainConfig(epochs=6, stages=2, frozen_bn_epochs=2)
    stages = plan_stages(RunConfig(train=training, policy=preset("w4a8-tanh")))
    assert [stage.frozen_bn_epochs for stage in stages] == [0, 2]          # stage 1 folds no BatchNorm
    with pytest.raises(EdgeasrError, match="need 0 to the 6 epochs"):
        plan_stages(RunConfig(train=TrainConfig(epochs=6, frozen_bn_epochs=7), policy=preset("w4a8-tanh")))
    with pytest.raises(EdgeasrError, match="quantized --policy"):
        plan_stages(RunConfig(train=TrainConfig(epochs=6, frozen_bn_epochs=1), policy=preset("float")))
    with pytest.raises(EdgeasrError, match="--mracos-weight pulls .* needs a quantized --policy"):
        plan_stages(RunConfig(train=TrainConfig(epochs=6, mracos_weight=0.5), policy=preset("float")))
    with pytest.raises(EdgeasrError, match="--stage2-lr-scale 0.1: scales stage 2 of --stages 2"):
        plan_stages(RunConfig(train=TrainConfig(epochs=6, stage2_lr_scale=0.1), policy=preset("w4a8-tanh")))


def test_float_policy_returns_the_model_and_bad_input_fails_clearly():
    model = _small_ds_cnn()
    assert qat.quantize_model(model, "float") is model
    with pytest.raises(EdgeasrError, match="stage"):
        qat.quantize_model(model, "w8a8", stage="both")
    inputs = keras.Input((FRAMES, MELS))
    outputs = keras.layers.Dense(4, name="head")(keras.layers.LayerNormalization(name="ln")(inputs))
    with pytest.raises(EdgeasrError, match=r"'ln' \(LayerNormalization\)"):
        qat.quantize_model(keras.Model(inputs, outputs), "w8a8")
    with pytest.raises(EdgeasrError, match="already quantized"):
        qat.quantize_model(qat.quantize_model(model, "w8a8"), "w8a8")


# --- MRACos --------------------------------------------------------------------------------------
def test_mracos_is_off_by_default_and_pulls_weights_to_the_grid():
    model = qat.quantize_model(_small_ds_cnn(), "w4a8", stage="weights")
    assert float(mracos_loss(model)) == 0.0 and not add_mracos(model, 0.0) and not model.losses
    start = float(mracos_penalty(model))
    assert 0.1 < start < 1.0
    optimizer = keras.optimizers.SGD(0.05)
    variables = [e["variable"] for e in qat.weight_quantizers(model)]
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = mracos_loss(model, 1.0)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    assert float(mracos_penalty(model)) < 0.5 * start
    for entry in qat.weight_quantizers(model):          # weights already on the grid cost nothing
        entry["variable"].assign(entry["effective"]())
    assert float(mracos_penalty(model)) < 1e-4
    assert add_mracos(model, 1e-3) and len(model.losses) == 1


# --- conversion -----------------------------------------------------------------------------------
def test_w4a8_tanh_ds_cnn_converts_to_int8_with_int4_weights(trained_w4_tanh):
    x, _ = _data(16, seed=7)

    def representative_dataset():
        for example in x:
            yield [example[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(trained_w4_tanh)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with pytest.raises(Exception, match="mismatched quantized axes"):    # the per-channel Dense trap
        converter.convert()
    with per_channel_dense_baked(trained_w4_tanh):                         # convert's way round it
        model_bytes = converter.convert()

    ops, tensors = read_model(model_bytes)
    assert ops.count("CONV_2D") == 5 and ops.count("DEPTHWISE_CONV_2D") == 4 and ops.count("FULLY_CONNECTED") == 1
    assert "DEQUANTIZE" not in ops and "QUANTIZE" not in ops
    assert not [t.name for t in tensors if t.type in ("FLOAT32", "FLOAT16")]   # fully integer

    # Every fake-quantized weight is INT4 (two per byte) and dequantizes to exactly the QAT model's
    # effective weight; the baked logits kernel is the converter's int8 per channel, on that grid to
    # within half an int8 step (the INT4 pass, tests/test_convert_int4.py, puts it back exactly).
    effective = qat.effective_weights(trained_w4_tanh)
    for name, weight in effective.items():
        label = f"/quant_{name}/" if name == "logits" else f"/{name}/"
        found = [t for t in tensors if t.data is not None and label in t.name and t.type != "INT32"]
        assert len(found) == 1, name
        tensor = found[0]
        assert tensor.type == ("INT8" if name == "logits" else "INT4"), (name, tensor.type)
        if name.startswith("dw"):
            expected = weight.reshape(1, *weight.shape[:2], -1)          # (1, kh, kw, channels)
        elif name == "logits":
            expected = weight.T                                          # (out, in)
        else:
            expected = weight.transpose(3, 0, 1, 2)                      # (out, kh, kw, in)
        assert tensor.shape == expected.shape
        axis = 3 if name.startswith("dw") else 0
        scale = tensor.scale.reshape([-1 if i == axis else 1 for i in range(expected.ndim)])
        if tensor.type == "INT8":
            stored = tensor.data.view(np.int8).reshape(expected.shape)
            assert np.all(np.abs(stored * scale - expected) <= 0.5 * scale + 1e-7)
            continue
        levels = unpack_int4(tensor.data, expected.size).reshape(expected.shape)
        assert np.abs(levels).max() <= 7
        np.testing.assert_allclose(levels * scale, expected, rtol=1e-5, atol=1e-7)

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    scores = []
    for example in x[:6]:
        interpreter.set_tensor(inp["index"], np.clip(np.round(example[None] / in_scale + in_zero), -128, 127)
                               .astype(np.int8))
        interpreter.invoke()
        scores.append((interpreter.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale)
    keras_scores = trained_w4_tanh.predict(x[:6], verbose=0)
    assert np.abs(np.concatenate(scores) - keras_scores).max() < 0.02


def test_an_average_pool_of_the_input_is_rounded_onto_the_input_grid_as_litert_rounds_it(tmp_path):
    """The stateless FFN averages its quantized input over time. The int8 AVERAGE_POOL_2D keeps the
    input's scale and rounds; the QAT model now rounds there too (the input quantizer called again,
    in inference mode), so Keras and LiteRT agree on the pooled values, and no requantizing op appears."""
    from edgeasr.converters.convert import convert_keras
    from edgeasr.converters.flatbuffer import load, op_name
    from edgeasr.runtime.litert import quantize, tracing_interpreter

    keras.utils.set_random_seed(0)
    inputs = keras.Input((98, 40), name="features")
    x = keras.layers.Reshape((98, 40, 1), name="add_channel")(inputs)
    x = keras.layers.AveragePooling2D((3, 1), strides=(3, 1), name="time_pool")(x)
    x = keras.layers.Dense(4, name="logits")(keras.layers.Flatten(name="flatten")(x))
    model = qat.quantize_model(keras.Model(inputs, keras.layers.Softmax(name="probs")(x)), "w8a8")
    features = np.random.default_rng(0).normal(size=(64, 98, 40)).astype(np.float32)
    model(features[:32], training=True)                               # sets the input range
    assert len(model.get_layer("quantize_features").inbound_nodes) == 2   # before and after the pool
    pooled = keras.Model(model.inputs, model.get_layer("flatten").output).predict(features, verbose=0)

    converted, _ = convert_keras(model, features)
    tflite = load(converted)
    assert [op_name(tflite, op) for op in tflite.subgraphs[0].operators] == \
        ["RESHAPE", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    interpreter = tracing_interpreter(converted, kernels="reference")
    detail = interpreter.get_input_details()[0]
    pool = next(d for d in interpreter.get_tensor_details() if d["name"] == "time_pool")
    assert pool["quantization"] == detail["quantization"]
    scale, zero_point = pool["quantization"]
    on_device = []
    for example in features:
        interpreter.set_tensor(detail["index"], quantize(example, detail)[None])
        interpreter.invoke()
        on_device.append(interpreter.get_tensor(pool["index"]).reshape(-1).astype(np.int64))
    steps = pooled / scale
    assert np.abs(steps - np.round(steps)).max() < 1e-3                # on the grid (26% were off)
    off = np.round(steps) + zero_point - np.stack(on_device)
    assert np.abs(off).max() <= 1 and np.mean(off != 0) < 1e-4

    path = tmp_path / "pooled.keras"
    model.save(path)
    np.testing.assert_array_equal(qat.load_model(path).predict(features, verbose=0), model.predict(features, verbose=0))
