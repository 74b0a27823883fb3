import shutil

import numpy as np
import pytest
import soundfile

from edgeasr.data.speech_commands import (
    SILENCE, UNKNOWN, DataConfig, fit_length, index_files, label_counts, load_split,
)
from edgeasr.errors import EdgeasrError
from tests.conftest import TINY_KEYWORDS

CONFIG = DataConfig(keywords=TINY_KEYWORDS)


def test_labels_are_silence_unknown_then_keywords():
    assert CONFIG.labels == [SILENCE, UNKNOWN, "yes", "no", "stop"]


def test_splits_follow_the_list_files(tiny_dataset):
    index = index_files(tiny_dataset, CONFIG)
    listed_test = set((tiny_dataset / "testing_list.txt").read_text().split())
    listed_validation = set((tiny_dataset / "validation_list.txt").read_text().split())
    assert {path for path, _ in index["test"]} <= listed_test
    assert {path for path, _ in index["validation"]} <= listed_validation
    assert not {path for path, _ in index["train"]} & (listed_test | listed_validation)


def test_unknown_words_are_sampled_to_their_percentage(tiny_dataset):
    index = index_files(tiny_dataset, CONFIG)
    labels = np.array([label for _, label in index["train"]])
    keywords = int(np.sum(labels >= 2))
    assert int(np.sum(labels == 1)) == int(np.ceil(keywords * CONFIG.unknown_percentage / 100))


def test_load_split_gives_fixed_length_int16_clips_with_silence(tiny_dataset):
    split = load_split(tiny_dataset, CONFIG, "train", progress=False)
    assert split.waves.dtype == np.int16 and split.waves.shape[1] == 16000
    counts = label_counts(split, CONFIG)
    assert counts[SILENCE] > 0 and all(counts[word] > 0 for word in TINY_KEYWORDS)
    assert split.report.used == len(split.labels) and not split.report.skipped
    speech = split.waves[split.labels >= 2].astype(np.float32) / 32768
    assert np.sqrt(np.mean(speech**2)) > 0.01


@pytest.fixture
def damaged_dataset(tiny_dataset, tmp_path):
    """The tiny dataset plus one empty, one corrupt, one NaN, one 8 kHz stereo and one short training file."""
    root = tmp_path / "damaged"
    shutil.copytree(tiny_dataset, root)
    soundfile.write(root / "yes" / "empty_nohash_0.wav", np.zeros(0, np.int16), 16000, subtype="PCM_16")
    (root / "yes" / "corrupt_nohash_0.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    soundfile.write(root / "yes" / "nan_nohash_0.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.5
    soundfile.write(root / "no" / "eightk_nohash_0.wav", stereo, 8000, subtype="PCM_16")
    soundfile.write(root / "stop" / "short_nohash_0.wav", np.full(4000, 0.25), 16000, subtype="PCM_16")
    return root


def test_bad_files_are_skipped_counted_and_resampled(damaged_dataset, tiny_dataset):
    clean = load_split(tiny_dataset, CONFIG, "train", progress=False)
    split = load_split(damaged_dataset, CONFIG, "train", progress=False)
    assert {reason: len(paths) for reason, paths in split.report.skipped.items()} == {"empty": 1, "unreadable": 2}
    assert split.report.resampled == 1
    assert "1 skipped (empty)" in split.report.summary()
    assert len(split.labels) - len(clean.labels) in (2, 3)  # two files added, silence share may round up


def test_resampled_and_short_clips_are_usable(damaged_dataset):
    from edgeasr.audio.io import audio_seconds, load_audio

    resampled = load_audio(damaged_dataset / "no" / "eightk_nohash_0.wav", 16000)
    assert len(resampled) == 16000 and abs(np.max(np.abs(resampled)) - 0.5) < 0.02
    assert audio_seconds(damaged_dataset / "no" / "eightk_nohash_0.wav") == 1.0
    assert audio_seconds(damaged_dataset / "stop" / "short_nohash_0.wav") == 0.25
    with pytest.raises(EdgeasrError, match="cannot read audio"):
        audio_seconds(damaged_dataset / "yes" / "corrupt_nohash_0.wav")
    padded = fit_length(np.ones(4000, np.int16), 16000)
    assert padded.shape == (16000,) and padded[:4000].all() and not padded[4000:].any()


def test_missing_or_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeasrError, match="not found"):
        load_split(tmp_path / "nope", CONFIG, "train")
    with pytest.raises(EdgeasrError, match="Speech Commands layout"):
        load_split(tmp_path, CONFIG, "train")
    with pytest.raises(EdgeasrError, match="unknown split"):
        load_split(tmp_path, CONFIG, "training")


def test_split_lists_are_read_by_line_and_every_entry_must_be_there(tiny_dataset, tmp_path):
    """A list entry that named no file was ignored, and the clip it meant trained instead of being
    held out (a folder renamed to 'turn on': the lists were split at the space)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    (root / "yes").rename(root / "turn on")
    for name in ("testing_list.txt", "validation_list.txt"):
        lines = (root / name).read_text().splitlines()
        (root / name).write_text("".join(f"./{line.replace('yes/', 'turn on/')}\n".replace("/", "\\", 1)
                                         if i % 2 else f"{line.replace('yes/', 'turn on/')}\n"
                                         for i, line in enumerate(lines)))
    config = DataConfig(keywords=("turn on", "no", "stop"))
    index = index_files(root, config)
    listed_test = {line.replace("yes/", "turn on/") for line in (tiny_dataset / "testing_list.txt").read_text().split()}
    assert {path for path, _ in index["test"]} <= listed_test
    assert any(path.startswith("turn on/") for path, _ in index["test"])
    assert not {path for path, _ in index["train"]} & listed_test
    held_out = sorted(listed_test)[0]
    (root / held_out).unlink()                                          # a listed clip that is not there
    with pytest.raises(EdgeasrError, match=rf"testing_list.txt: 1 of its {len(listed_test)} entries name no audio "
                                           rf"file under .*\(e.g. {held_out}\).*would otherwise be trained on"):
        index_files(root, config)


def test_clips_with_upper_case_or_flac_suffixes_are_read(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    training = sorted(set(p.name for p in (root / "stop").iterdir())
                      - {line.split("/", 1)[1] for line in (root / "testing_list.txt").read_text().split()
                         + (root / "validation_list.txt").read_text().split() if line.startswith("stop/")})
    upper, flac = root / "stop" / training[0], root / "stop" / training[1]
    upper.rename(upper.with_suffix(".WAV"))
    samples, rate = soundfile.read(flac, dtype="int16")
    soundfile.write(flac.with_suffix(".flac"), samples, rate)
    flac.unlink()
    ogg = root / "stop" / training[2]
    soundfile.write(ogg.with_suffix(".ogg"), *soundfile.read(ogg, dtype="int16"))
    ogg.unlink()
    (root / "stop" / "notes.m4a").write_bytes(b"not read")
    (root / ".Trash-1000").mkdir()                                   # hidden: never data
    shutil.copy(upper.with_suffix(".WAV"), root / ".Trash-1000" / "old.wav")
    shutil.copy(upper.with_suffix(".WAV"), root / "stop" / "._apple_double.wav")
    loud = root / "stop" / training[3]
    soundfile.write(loud, soundfile.read(loud, dtype="float32")[0] * 3 + 0.5, 16000, subtype="FLOAT")  # peaks > 2
    names = {path for path, _ in index_files(root, CONFIG)["train"]}
    assert {f"stop/{upper.stem}.WAV", f"stop/{flac.stem}.flac", f"stop/{ogg.stem}.ogg"} <= names
    assert not any(".Trash" in name or "._" in name for name in names)
    report = load_split(root, CONFIG, "train", progress=False).report
    assert report.skipped == {"not wav/flac/ogg/mp3": [str(root / "stop" / "notes.m4a")],
                              "float samples beyond [-2, 2]": [str(loud)]}


def test_a_copy_without_unused_words_and_lists_in_other_encodings(tiny_dataset, tmp_path):
    from edgeasr.data.speech_commands import load_background_noise

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    shutil.rmtree(root / "tree")                       # a word this run does not use: its entries are moot
    assert not any(path.startswith("tree/") for split in index_files(root, CONFIG).values() for path, _ in split)
    listing = root / "testing_list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + listing.read_bytes())                   # a BOM (Notepad)
    assert {p for p, _ in index_files(root, CONFIG)["test"]} <= set(listing.read_text("utf-8-sig").split())
    listing.write_text(listing.read_text("utf-8-sig"), encoding="utf-16")          # PowerShell 5's '>'
    with pytest.raises(EdgeasrError, match="testing_list.txt: not UTF-8 text"):
        index_files(root, CONFIG)
    noise = sorted((root / "_background_noise_").iterdir())
    before = len(load_background_noise(root, 16000))
    noise[0].rename(noise[0].with_suffix(".WAV"))
    assert len(load_background_noise(root, 16000)) == before
