"""ASR data: synthetic corpus (determinism, held-out voices), manifests, tokenizers, tf.data batches."""
import json

import numpy as np
import pytest
import soundfile

from edgeasr.audio.frontend import FrontendConfig
from edgeasr.data.asr_synth import AsrSynthConfig, synthesize_asr_corpus, word_list
from edgeasr.data.manifest import Utterance, librispeech_manifest, read_manifest, write_manifest
from edgeasr.data.tokenizer import Tokenizer, char_tokenizer, normalize_text, train_sentencepiece
from edgeasr.errors import EdgeasrError

CONFIG = AsrSynthConfig(speakers=6, utterances_per_speaker=3, seed=5, max_seconds=3.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr") / "corpus"
    summary = synthesize_asr_corpus(root, CONFIG, progress=False)
    return root, summary


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthesis_is_deterministic(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    synthesize_asr_corpus(again, CONFIG, progress=False)
    assert _files(root) == _files(again)


def test_test_voices_are_held_out(corpus):
    root, summary = corpus
    assert summary["utterances"] == {"training": 12, "validation": 3, "testing": 3}
    speakers = json.loads((root / "synth_asr_config.json").read_text())["speakers"]
    variants = {split: {name.split("+")[1] for name in names} for split, names in speakers.items()}
    assert not variants["training"] & variants["testing"]
    assert not variants["training"] & variants["validation"]
    in_manifest = {u.speaker for u in read_manifest(root / "test.jsonl")}
    assert in_manifest == set(speakers["testing"])


def test_utterances_fit_and_use_the_word_list(corpus):
    root, _ = corpus
    vocabulary = set(word_list())
    assert 250 <= len(vocabulary) <= 500
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        for utterance in read_manifest(root / name):
            audio, rate = soundfile.read(str(utterance.audio))
            assert rate == 16000
            assert abs(len(audio) / rate - utterance.duration) < 1e-3
            assert 0.3 < utterance.duration <= CONFIG.max_seconds
            assert set(utterance.text.split()) <= vocabulary
            assert np.max(np.abs(audio)) > 0.2


def test_manifest_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    wav = tmp_path / "a" / "x.wav"
    soundfile.write(str(wav), np.zeros(1600, np.int16), 16000)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.wav"
    soundfile.write(str(outside), np.zeros(800, np.int16), 16000)
    utterances = [Utterance(wav, "turn it off", 0.1, "s1"), Utterance(outside, "yes", 0.05)]
    path = write_manifest(tmp_path / "m.jsonl", utterances)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["audio"] == "a/x.wav" and lines[1]["audio"] == str(outside.resolve())
    back = read_manifest(path)
    assert [(u.audio.resolve(), u.text, u.duration, u.speaker) for u in back] == \
        [(wav.resolve(), "turn it off", 0.1, "s1"), (outside.resolve(), "yes", 0.05, "")]
    outside.unlink()


def test_manifest_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"audio": "missing.wav", "text": "hi", "duration": 1}\n')
    with pytest.raises(EdgeasrError, match=r"bad.jsonl:1: audio file .*missing.wav"):
        read_manifest(path)
    path.write_text('{"text": "hi"}\n')
    with pytest.raises(EdgeasrError, match=r"bad.jsonl:1: not a manifest line"):
        read_manifest(path)
    path.write_bytes(b'{"audio": "a.wav", "text": "hi", "duration": 1}\n{"audio": "b.wav", "text": "caf\xe9"}\n')
    with pytest.raises(EdgeasrError, match=r"bad.jsonl:2: not UTF-8 text; a manifest is JSON lines"):
        read_manifest(path)


def test_float_files_in_another_scale_are_refused_not_clipped(tmp_path):
    """int16 clipped 18% of a float file peaking at 8: a different signal, transcribed and scored."""
    from edgeasr.audio.io import AudioError, load_int16

    loud, fine = tmp_path / "loud.wav", tmp_path / "fine.wav"
    tone = np.sin(np.arange(1600) / 5).astype(np.float32)
    soundfile.write(str(loud), tone * 8, 16000, subtype="FLOAT")
    soundfile.write(str(fine), tone * 1.5, 16000, subtype="FLOAT")       # a float file's overshoot: clipped
    with pytest.raises(AudioError, match=r"loud.wav: float samples peaking at 8, not in \[-1, 1\]; int16 would "
                                         r"clip .*% of them"):
        load_int16(loud, 16000)
    assert load_int16(fine, 16000).max() == 32767


def test_texts_whose_spoken_words_normalisation_drops_are_counted(tmp_path, capsys):
    from edgeasr.data.asr_pipeline import load_asr_split
    from edgeasr.data.tokenizer import drops_spoken_text

    assert drops_spoken_text("room 101 at 5pm") and drops_spoken_text("café")
    assert not drops_spoken_text("Don't STOP, now!")
    wav = tmp_path / "x.wav"
    soundfile.write(str(wav), np.zeros(1600, np.int16), 16000)
    path = write_manifest(tmp_path / "m.jsonl", [Utterance(wav, "room 101 at 5pm", 0.1), Utterance(wav, "yes", 0.1)])
    load_asr_split(path, char_tokenizer(), FrontendConfig())
    err = capsys.readouterr().err
    assert "1 of 2 texts lose digits or letters outside a-z" in err and "'room 101 at 5pm' -> 'room at pm'" in err
    load_asr_split(path, char_tokenizer(), FrontendConfig(), warn=False)     # eval-asr's second model: said once
    assert capsys.readouterr().err == ""


def test_a_manifest_of_narrowband_audio_is_warned_about(tmp_path, capsys):
    from edgeasr.data.asr_pipeline import load_asr_split

    utterances = []
    for name, rate in (("phone.wav", 8000), ("fine.wav", 16000)):
        soundfile.write(str(tmp_path / name), np.zeros(rate // 10, np.int16), rate)
        utterances.append(Utterance(tmp_path / name, "yes", 0.1))
    path = write_manifest(tmp_path / "m.jsonl", utterances)
    split = load_asr_split(path, char_tokenizer(), FrontendConfig(fmax=7600.0))
    assert [len(wave) for wave in split.waves] == [1600, 1600]
    assert (f"warning: {path}: 1 of 2 files are recorded below the model's 16000 Hz (lowest 8000 Hz) and upsampled: "
            f"they hold nothing above 4000 Hz") in capsys.readouterr().err
    load_asr_split(path, char_tokenizer(), FrontendConfig(fmax=4000.0))   # the frontend looks no higher: no warning
    assert capsys.readouterr().err == ""


def test_a_damaged_audio_body_is_named_with_its_manifest(tmp_path):
    """The manifest reads headers only; loading the split decodes, and names both files."""
    from edgeasr.data.asr_pipeline import load_asr_split

    wav = tmp_path / "nan.wav"
    soundfile.write(str(wav), np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    path = write_manifest(tmp_path / "m.jsonl", [Utterance(wav, "yes", 0.1)])
    with pytest.raises(EdgeasrError, match=r"m.jsonl: .*nan.wav: the file holds NaN .*remove its line"):
        load_asr_split(path, char_tokenizer(), FrontendConfig())


def test_librispeech_layout_gives_the_same_manifest(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "19" / "198"
    chapter.mkdir(parents=True)
    for k, seconds in enumerate((0.5, 1.25)):
        soundfile.write(str(chapter / f"19-198-000{k}.flac"), np.zeros(int(16000 * seconds), np.int16), 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n")
    summary = librispeech_manifest(tmp_path / "LibriSpeech", tmp_path / "libri.jsonl", max_seconds=1.0)
    assert summary["utterances"] == 1 and summary["skipped_too_long"] == 1
    (utterance,) = read_manifest(tmp_path / "libri.jsonl")
    assert utterance.text == "northanger abbey" and utterance.speaker == "19"
    assert utterance.duration == pytest.approx(0.5)


def test_char_tokenizer_round_trip():
    tokenizer = char_tokenizer()
    assert tokenizer.vocab_size == 29 and tokenizer.tokens[0] == "<blank>"
    ids = tokenizer.encode("Turn ON the kitchen's  lights!")
    assert 0 not in ids
    assert tokenizer.decode(ids) == "turn on the kitchen's lights"
    assert Tokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict()))).encode("abc") == [3, 4, 5]
    assert normalize_text("Set it to 5, please.") == "set it to please"


def test_sentencepiece_tokenizer_round_trip():
    pytest.importorskip("sentencepiece")
    texts = [f"turn {s} the {room} lights" for s in ("on", "off") for room in ("kitchen", "garden", "office")] * 20
    tokenizer = train_sentencepiece(texts, vocab_size=30)
    ids = tokenizer.encode("turn off the garden lights")
    assert 0 not in ids and len(ids) < len("turn off the garden lights")
    assert tokenizer.decode(ids) == "turn off the garden lights"
    restored = Tokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    assert restored.encode("turn on the office lights") == tokenizer.encode("turn on the office lights")
    # letters its model never saw ('z', 'b') encode as <unk>: counted, and never printed as text
    assert tokenizer.unspellable(["turn on the lights", "zebra lights"]) == ["zebra lights"]
    assert tokenizer.decode(tokenizer.encode("zebra lights")) == "era lights"
    assert char_tokenizer().unspellable(["zebra"]) == []


def test_batches_pack_lengths_and_labels(corpus):
    from edgeasr.data.asr_pipeline import asr_dataset, ctc_feasible, ctc_loss, load_asr_split
    from edgeasr.models.conformer import output_frames

    root, _ = corpus
    frontend = FrontendConfig()
    tokenizer = char_tokenizer()
    split = load_asr_split(root / "train.jsonl", tokenizer, frontend)
    features, targets = next(iter(asr_dataset(split, frontend, output_frames, batch_size=4)))
    assert features.shape[0] == 4 and features.shape[2] == frontend.n_mels
    lengths = sorted(len(w) for w in split.waves)[:4]          # unshuffled: the 4 shortest
    assert features.shape[1] == frontend.num_frames(lengths[-1])
    frames = sorted(output_frames(frontend.num_frames(n)) for n in lengths)
    assert sorted(targets[:, 0].numpy().tolist()) == frames
    for row in targets.numpy():
        labels = row[1:][row[1:] > 0]
        assert tokenizer.decode(labels) in split.texts
        assert ctc_feasible(labels, row[0])
    logits = np.random.default_rng(0).normal(size=(4, int(features.shape[1]) // 4 + 1, 29)).astype(np.float32)
    loss = float(ctc_loss(targets, logits))
    assert np.isfinite(loss) and loss > 0
    assert not ctc_feasible(np.array([3, 3, 3]), 4) and ctc_feasible(np.array([3, 4, 3]), 3)


def test_utterances_too_fast_for_ctc_are_dropped_in_training_and_counted_in_validation(capsys):
    from edgeasr.data.asr_pipeline import AsrSplit, asr_dataset
    from edgeasr.models.conformer import output_frames

    frontend = FrontendConfig()
    fast = AsrSplit([np.zeros(4000, np.int16)], ["too many letters"], [np.arange(3, 23, dtype=np.int32)])
    with pytest.raises(EdgeasrError, match="no training utterance CTC can align: all 1 have more labels"):
        asr_dataset(fast, frontend, output_frames, batch_size=4, training=True)
    asr_dataset(fast, frontend, output_frames, batch_size=4)
    assert "1 of 1 validation utterances are too fast for CTC" in capsys.readouterr().out


def test_spec_augment_zeroes_bands_and_spans():
    import tensorflow as tf

    from edgeasr.data.asr_pipeline import SpecAugmentConfig, spec_augment

    features = tf.ones((3, 200, 40))
    masked = spec_augment(features, SpecAugmentConfig(freq_masks=1, freq_width=6, time_masks=1, time_fraction=0.1),
                          tf.constant([1, 2]))
    zero = masked.numpy() == 0
    assert 0 < zero.mean() < 0.3
    whole_bands = zero.all(axis=1).sum(axis=1)     # per example: zeroed mel bins
    whole_spans = zero.all(axis=2).sum(axis=1)     # per example: zeroed frames
    assert (whole_bands <= 6).all() and (whole_spans <= 20).all()


def test_evenly_spaced_spreads_over_the_manifest():
    from edgeasr.data.asr_pipeline import evenly_spaced

    items = list(range(100))
    assert evenly_spaced(items, 5) == [0, 25, 50, 74, 99]
    assert evenly_spaced(items, None) == items and evenly_spaced(items, 500) == items
    assert evenly_spaced(items, 0) == []


def _libri_chapter(root, lines, audio):
    """A LibriSpeech-layout chapter 19/198 under root: `audio` maps utterance number -> bytes or samples."""
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    for number, content in audio.items():
        name = chapter / f"19-198-000{number}"
        if isinstance(content, bytes):
            name.with_suffix(".flac").write_bytes(content)
        else:
            soundfile.write(str(name.with_suffix(".wav")), content, 16000)
    (chapter / "19-198.trans.txt").write_bytes(lines)
    return root


def test_librispeech_leaves_out_and_counts_unusable_lines(tmp_path):
    half = np.full(8000, 1000, np.int16)
    root = _libri_chapter(tmp_path / "ls", b"19-198-0000  NORTHANGER   ABBEY \r\n19-198-0001\n"
                                           b"19-198-0002 EMPTY FILE\n19-198-0003 CORRUPT FILE\n"
                                           b"19-198-0004\tTAB  SEPARATED\n\n19-198-0005 123 ...\n",
                          {0: half, 1: half, 2: np.zeros(0, np.int16), 3: b"garbage", 4: half, 5: half})
    summary = librispeech_manifest(root, tmp_path / "m.jsonl")
    assert summary["utterances"] == 2 and summary["skipped_no_text"] == 2
    assert summary["skipped_no_samples"] == 1 and summary["skipped_unreadable"] == 1
    assert summary["skipped_too_long"] == 0
    assert [u.text for u in read_manifest(tmp_path / "m.jsonl")] == ["northanger abbey", "tab separated"]


def test_librispeech_errors_are_plain(tmp_path):
    half = np.full(8000, 1000, np.int16)
    root = _libri_chapter(tmp_path / "lat", b"19-198-0000 CAF\xc9\n", {0: half})
    with pytest.raises(EdgeasrError, match=r"19-198.trans.txt:1: not UTF-8"):
        librispeech_manifest(root, tmp_path / "lat.jsonl")
    root = _libri_chapter(tmp_path / "ok", b"19-198-0000 HELLO\n", {0: half})
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(EdgeasrError, match="max_seconds=.*above 0"):
            librispeech_manifest(root, tmp_path / "ok.jsonl", max_seconds=bad)
    with pytest.raises(EdgeasrError, match=r"no usable utterance \(skipped: 1 too long\)"):
        librispeech_manifest(root, tmp_path / "ok.jsonl", max_seconds=0.1)
    assert not (tmp_path / "ok.jsonl").exists()
    marked = _libri_chapter(tmp_path / "bom", b"\xef\xbb\xbf19-198-0000 HELLO\n", {0: half})   # Windows editors
    librispeech_manifest(marked, tmp_path / "bom.jsonl")
    assert [u.text for u in read_manifest(tmp_path / "bom.jsonl")] == ["hello"]
    transcript = marked / "19" / "198" / "19-198.trans.txt"
    with pytest.raises(EdgeasrError, match=r"bom.jsonl already exists; pass --force"):
        librispeech_manifest(marked, tmp_path / "bom.jsonl")
    with pytest.raises(EdgeasrError, match=r"19-198.trans.txt already exists"):      # -o naming a transcript
        librispeech_manifest(marked, transcript)
    assert transcript.read_bytes().endswith(b"19-198-0000 HELLO\n")
    assert librispeech_manifest(marked, tmp_path / "bom.jsonl", force=True)["utterances"] == 1
    twice = _libri_chapter(tmp_path / "twice", b"19-198-0000 HELLO\n19-198-0000 GOODBYE\n", {0: half})
    with pytest.raises(EdgeasrError, match=r"19-198.trans.txt:2: utterance 19-198-0000 is listed again \(first on "
                                           r"line 1\)"):
        librispeech_manifest(twice, tmp_path / "twice.jsonl")
    upper = _libri_chapter(tmp_path / "upper", b"19-198-0000 ROOM 101\n", {0: half, 1: half})
    chapter = upper / "19" / "198"
    (chapter / "19-198-0000.wav").rename(chapter / "19-198-0000.Wav")
    summary = librispeech_manifest(upper, tmp_path / "upper.jsonl")
    assert summary["utterances"] == 1 and summary["unused_audio"] == 1          # 0001 has no transcript line
    assert summary["texts_losing_words"] == 1                                   # "101" is not spelt out
    (chapter / "19-198-0000.flac").write_bytes((chapter / "19-198-0000.Wav").read_bytes())
    (chapter / "19-198-0000.FLAC").write_bytes((chapter / "19-198-0000.Wav").read_bytes())
    summary = librispeech_manifest(upper, tmp_path / "upper.jsonl", force=True)    # one of three files used
    assert summary["utterances"] == 1 and summary["unused_audio"] == 3
    with pytest.raises(EdgeasrError, match="a transcript or audio file of the tree being read"):
        librispeech_manifest(upper, chapter / "19-198.trans.txt", force=True)
    (chapter / "19-198-b.trans.txt").write_text("19-198-0000 GOODBYE\n")       # a second transcript, same folder
    with pytest.raises(EdgeasrError, match=r"19-198.trans.txt: utterance 19-198-0000 is listed in 19-198-b.trans.txt"
                                           r"|19-198-b.trans.txt: utterance 19-198-0000 is listed in 19-198.trans.txt"):
        librispeech_manifest(upper, tmp_path / "two.jsonl")


def test_manifest_command_checks_max_seconds(tmp_path):
    from click.testing import CliRunner

    from edgeasr.cli import main

    root = _libri_chapter(tmp_path / "ls", b"19-198-0000 HELLO\n", {0: np.full(8000, 1000, np.int16)})
    result = CliRunner().invoke(main, ["data", "manifest", "--librispeech", str(root), "-o", str(tmp_path / "m.jsonl"),
                                       "--max-seconds", "0"])
    assert result.exit_code == 2 and "'--max-seconds'" in result.output and "not in the range x>0" in result.output
    assert not (tmp_path / "m.jsonl").exists()


def test_synth_asr_minimum_length_is_what_the_help_says():
    from click.testing import CliRunner

    from edgeasr.cli import main
    from edgeasr.data.asr_synth import MIN_SECONDS, _check_config

    help_text = " ".join(CliRunner().invoke(main, ["data", "synth-asr", "--help"]).output.split())
    assert f"at least {MIN_SECONDS:g}" in help_text
    _check_config(AsrSynthConfig(max_seconds=MIN_SECONDS))
    for bad in (MIN_SECONDS - 0.5, float("nan"), float("inf")):
        with pytest.raises(EdgeasrError, match=f"at least {MIN_SECONDS:g}"):
            _check_config(AsrSynthConfig(max_seconds=bad))


def test_synth_asr_fits_every_utterance_at_the_minimum_length(tmp_path):
    config = AsrSynthConfig(speakers=6, utterances_per_speaker=4, seed=1, max_seconds=2.0)
    summary = synthesize_asr_corpus(tmp_path / "short", config, progress=False)
    assert sum(summary["utterances"].values()) == 24
