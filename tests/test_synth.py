import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgeasr.data.espeak import Espeak
from edgeasr.data.speech_commands import BACKGROUND_DIR
from edgeasr.data.synth import SynthConfig, synthesize_kws_dataset
from edgeasr.errors import EdgeasrError

WORDS = ("yes", "stop")
UNKNOWN = ("cat",)
SMALL = SynthConfig(words=WORDS, unknown_words=UNKNOWN, speakers=5, repeats=1, noise_seconds=2.0, seed=1)
NOISE_FILES = {"white_noise.wav", "pink_noise.wav", "brown_noise.wav", "babble.wav"}


def _build(root: Path, config: SynthConfig = SMALL) -> dict:
    return synthesize_kws_dataset(root, config, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, _build(root)


def _clips(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if p.parent.name != BACKGROUND_DIR)


def _listed(root: Path, split: str):
    return (root / f"{split}_list.txt").read_text().split()


def _speaker_hashes(paths):
    return {Path(p).name.split("_nohash_")[0] for p in paths}


def _file_bytes(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_matches_speech_commands(small):
    root, summary = small
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == set(WORDS) | set(UNKNOWN) | {BACKGROUND_DIR}
    assert {p.name for p in (root / BACKGROUND_DIR).iterdir()} == NOISE_FILES
    clips = _clips(root)
    # 5 speakers x (2 keywords x 1 take + 1 unknown word x 1 take)
    assert len(clips) == 15
    assert summary["clips"] == {"training": 9, "validation": 3, "testing": 3}
    assert summary["speakers"] == {"training": 3, "validation": 1, "testing": 1}
    for relative in clips:
        assert Path(relative).name.endswith("_nohash_0.wav")
        assert len(Path(relative).name.split("_nohash_")[0]) == 8
        info = soundfile.info(str(root / relative))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    for name in NOISE_FILES:
        info = soundfile.info(str(root / BACKGROUND_DIR / name))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 32000, "PCM_16")
    for split in ("validation", "testing"):
        listed = _listed(root, split)
        assert listed == sorted(listed) and len(listed) == 3 and set(listed) <= set(clips)
    described = json.loads((root / "synth_config.json").read_text())
    assert described["config"]["words"] == list(WORDS)
    assert [len(described["speakers"][s]) for s in ("training", "validation", "testing")] == [3, 1, 1]


def test_speakers_and_variants_are_disjoint_between_splits(small):
    root, _ = small
    validation, testing = _listed(root, "validation"), _listed(root, "testing")
    training = sorted(set(_clips(root)) - set(validation) - set(testing))
    hashes = [_speaker_hashes(paths) for paths in (training, validation, testing)]
    assert [len(h) for h in hashes] == [3, 1, 1]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2]) and not (hashes[1] & hashes[2])
    speakers = json.loads((root / "synth_config.json").read_text())["speakers"]
    variants = [{name.split("+")[1] for name in speakers[s]} for s in ("training", "validation", "testing")]
    assert not (variants[0] & variants[1]) and not (variants[0] & variants[2]) and not (variants[1] & variants[2])


def test_clips_contain_speech_that_is_not_clipped(small):
    root, _ = small
    for relative in _clips(root):
        samples, _ = soundfile.read(str(root / relative), dtype="int16")
        audio = samples.astype(np.float64) / 32768.0
        rms, peak = np.sqrt(np.mean(audio ** 2)), np.max(np.abs(audio))
        assert rms > 0.005, relative  # a silent clip has RMS 0; speech at peak 0.3..0.9 is > 0.01
        assert 0.29 <= peak <= 0.91, relative
        assert np.mean(np.abs(audio) > 0.001) > 0.1, relative  # speech spans > 0.1 s of the clip
        assert np.max(np.abs(samples.astype(np.int32))) < 32000, relative


def test_noise_files_are_distinct_and_shaped(small):
    root, _ = small
    noise = {name: soundfile.read(str(root / BACKGROUND_DIR / name))[0] for name in NOISE_FILES}
    for name, audio in noise.items():
        assert 0.45 < np.max(np.abs(audio)) <= 0.51, name
    # Brown noise is smoother than pink, pink smoother than white: compare sample-to-sample change.
    roughness = {n: np.std(np.diff(a)) / np.std(a) for n, a in noise.items()}
    assert roughness["brown_noise.wav"] < roughness["pink_noise.wav"] < roughness["white_noise.wav"]
    assert roughness["white_noise.wav"] > 1.3  # white: diff doubles the variance, ratio ~ sqrt(2)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small, tmp_path):
    root, _ = small
    _build(tmp_path / "again")
    assert _file_bytes(tmp_path / "again") == _file_bytes(root)
    _build(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": 2}))
    other = _file_bytes(tmp_path / "other")
    assert other["_background_noise_/white_noise.wav"] != _file_bytes(root)["_background_noise_/white_noise.wav"]
    assert set(other) != set(_file_bytes(root))  # other speakers, so other file names


def test_espeak_is_reproducible_after_reset():
    engine = Espeak()
    engine.reset(seed=7)
    first = engine.synthesize("stop", voice="en-gb-x-rp", variant="whisper")
    engine.synthesize("something else entirely", voice="en-us", variant="f3")
    engine.reset(seed=7)
    assert np.array_equal(engine.synthesize("stop", voice="en-gb-x-rp", variant="whisper"), first)
    assert engine.sample_rate == 22050 and first.dtype == np.int16 and len(first) > 0.2 * 22050


def test_unknown_voice_or_variant_raises():
    engine = Espeak()
    with pytest.raises(EdgeasrError, match="en-xx"):
        engine.synthesize("yes", voice="en-xx")
    with pytest.raises(EdgeasrError, match="nosuchvariant"):
        engine.synthesize("yes", voice="en-us", variant="nosuchvariant")


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(EdgeasrError, match="not empty"):
        _build(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no staging folder left behind


def test_overwrite_replaces_a_dataset_whole_and_nothing_else(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    config = SynthConfig(words=("no",), unknown_words=(), speakers=3, repeats=1, noise_seconds=1.0)
    with pytest.raises(EdgeasrError, match="not a dataset this command wrote .no synth_config.json."):
        synthesize_kws_dataset(target, config, progress=False, overwrite=True)     # a user's folder stays
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    (target / "keep.txt").unlink()
    synthesize_kws_dataset(target, config, progress=False)
    (target / "no" / "stale.wav").write_bytes(b"old")
    summary = synthesize_kws_dataset(target, config, progress=False, overwrite=True)
    assert summary["clips"] == {"training": 1, "validation": 1, "testing": 1}
    assert not (target / "no" / "stale.wav").exists()
    assert len(list((target / "no").glob("*.wav"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_sentence_windows_are_full_second_unknown_speech_without_keywords(tmp_path):
    from edgeasr.data.speech_commands import UNKNOWN as UNKNOWN_LABEL, DataConfig, index_files
    from edgeasr.data.synth import SENTENCES_FOLDER, keyword_free_sentence

    config = SynthConfig(words=WORDS, unknown_words=UNKNOWN, speakers=3, repeats=1, noise_seconds=1.0,
                         sentence_windows=2)
    summary = synthesize_kws_dataset(tmp_path / "data", config, progress=False)
    windows = sorted((tmp_path / "data" / SENTENCES_FOLDER).glob("*.wav"))
    assert len(windows) == 6 and summary["clips"] == {"training": 5, "validation": 5, "testing": 5}
    for path in windows:
        audio = soundfile.read(str(path))[0]
        assert len(audio) == 16000
        assert np.mean(np.abs(audio) > 0.01) > 0.25, path.name   # speech over much of the second, not one word
    labels = DataConfig(keywords=WORDS, unknown_percentage=100.0).labels
    indexed = index_files(tmp_path / "data", DataConfig(keywords=WORDS, unknown_percentage=100.0))
    sentence_labels = {label for split in indexed.values() for path, label in split if path.startswith(SENTENCES_FOLDER)}
    assert sentence_labels == {labels.index(UNKNOWN_LABEL)}
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert not set(keyword_free_sentence(rng, ("on", "the", "up")).split()) & {"on", "the", "up"}
    with pytest.raises(EdgeasrError, match="sentence_windows"):
        synthesize_kws_dataset(tmp_path / "bad", SynthConfig(sentence_windows=-1), progress=False)


def test_chosen_keywords_leave_the_unknown_words_and_a_clash_is_named():
    from edgeasr.data.synth import DEFAULT_UNKNOWN_WORDS, SynthConfig, _check_config, unknown_words

    assert "zero" in DEFAULT_UNKNOWN_WORDS and "zero" not in unknown_words(keywords=("zero", "one"))
    assert unknown_words(keywords=("zero",)) == tuple(w for w in DEFAULT_UNKNOWN_WORDS if w != "zero")
    with pytest.raises(EdgeasrError, match=r"^SynthConfig: bed: repeated, or both a keyword and an unknown word$"):
        _check_config(SynthConfig(words=("bed", "yes"), unknown_words=DEFAULT_UNKNOWN_WORDS))


def test_babble_never_says_a_chosen_keyword():
    from edgeasr.data.speech_commands import SPEECH_COMMANDS_KEYWORDS
    from edgeasr.data.synth import BABBLE_PHRASES, babble_phrases

    assert babble_phrases(SPEECH_COMMANDS_KEYWORDS) == BABBLE_PHRASES        # the default data is unchanged
    chosen = babble_phrases(("seven", "learn", "think"))
    assert "seven" not in chosen and "learn" not in chosen and "I think so" not in chosen
    assert len(chosen) == len(BABBLE_PHRASES) - 3
