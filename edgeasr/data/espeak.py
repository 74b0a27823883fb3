"""A small ctypes binding to the libespeak-ng shipped in the espeakng-loader wheel.

No system package is needed: the wheel carries both the library and espeak-ng-data.
espeak-ng keeps global state (one voice, one callback), so the library is loaded and
initialised once per process, on first use, and every `Espeak` object shares it.

espeak-ng is not reproducible on its own: each synthesis leaves static state behind (pitch
flutter position, gain control, oscillator phases) that no API call resets, so saying the same
word twice gives different samples, and espeak_Initialize seeds its noise generator from the
clock. `Espeak.reset` therefore unloads and reloads the library (a few milliseconds) and fixes
the noise seed: the samples after a reset depend only on the calls made since.
"""
import _ctypes
import ctypes
import threading
from pathlib import Path
from typing import List, Optional

import numpy as np

from edgeasr.errors import EdgeasrError

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 1
EE_OK = 0
CALLBACK_CONTINUE = 0

PARAM_RATE = 1  # words per minute, 80..450
PARAM_PITCH = 3  # 0..100
PARAM_RANGE = 4  # pitch range, 0..100


class _Voice(ctypes.Structure):
    """espeak_VOICE from speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)*, then a NUL
        ("identifier", ctypes.c_char_p),  # file under espeak-ng-data/voices, e.g. gmw/en-GB-x-rp
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


# int callback(short *wav, int numsamples, espeak_EVENT *events); the events are not read.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.RLock()
_chunks: List[np.ndarray] = []
_state: dict = {}  # lib, data_path, sample_rate: set by _open(), cleared by _close()


def _collect(wav, numsamples, _events) -> int:
    if wav and numsamples > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    return CALLBACK_CONTINUE


_callback = _SynthCallback(_collect)  # module-level so it lives as long as the library uses it


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int


def _open(seed: int) -> None:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EdgeasrError("speech synthesis needs espeakng-loader: pip install espeakng-loader") from exc
    data_path = Path(espeakng_loader.get_data_path())
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    _declare(lib)
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
    if sample_rate <= 0:
        raise EdgeasrError(f"espeak-ng failed to initialise with its data at {data_path}")
    lib.espeak_SetSynthCallback(_callback)
    lib.espeak_ng_SetRandSeed(seed)
    _state.update(lib=lib, data_path=data_path, sample_rate=sample_rate)


def _close() -> None:
    lib = _state.pop("lib", None)
    if lib is not None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)  # the last handle: the next dlopen maps fresh static data


def _library() -> ctypes.CDLL:
    with _lock:
        if "lib" not in _state:
            _open(seed=0)
        return _state["lib"]


def _languages(voice: _Voice) -> List[str]:
    """Decode espeak's packed language list: priority byte, code, NUL, ..., final NUL."""
    codes, offset = [], 0
    while voice.languages:
        if ctypes.string_at(voice.languages + offset, 1) == b"\0":
            break
        code = ctypes.string_at(voice.languages + offset + 1)
        codes.append(code.decode())
        offset += 2 + len(code)
    return codes


class Espeak:
    """Speech from espeak-ng as int16 arrays; all instances share the one library state."""

    def __init__(self):
        _library()
        self._variants = frozenset(self.variants())

    @property
    def sample_rate(self) -> int:
        _library()
        return _state["sample_rate"]

    def reset(self, seed: int = 0) -> None:
        """Reload libespeak-ng so what comes next does not depend on what was said before."""
        with _lock:
            _close()
            _open(seed=int(seed) & 0x7FFFFFFF)

    def variants(self) -> List[str]:
        """Names usable after '+' in a voice name: the files in espeak-ng-data/voices/!v."""
        _library()
        folder = _state["data_path"] / "voices" / "!v"
        return sorted(p.name for p in folder.iterdir() if p.is_file())

    def english_voices(self) -> List[str]:
        """Selectable names of espeak's English voices (en, en-us, en-gb-x-rp, ...).

        These are the voice file names, lower-cased: espeak lists the British voice under the
        language 'en-gb', but only 'en' (its file name) selects it.
        """
        voices = _library().espeak_ListVoices(None)
        names, index = set(), 0
        while voices[index]:
            voice = voices[index].contents
            codes = _languages(voice)
            if codes and (codes[0] == "en" or codes[0].startswith("en-")):
                names.add(voice.identifier.decode().rsplit("/", 1)[-1].lower())
            index += 1
        return sorted(names)

    def synthesize(self, text: str, voice: str = "en-us", variant: Optional[str] = None,
                   rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> np.ndarray:
        """Speak `text` as `voice`(+`variant`); int16 samples at `sample_rate` Hz."""
        with _lock:
            self._select_voice(voice, variant)
            self._set(PARAM_RATE, rate, "rate")
            self._set(PARAM_PITCH, pitch, "pitch")
            self._set(PARAM_RANGE, pitch_range, "pitch_range")
            return self._speak(text)

    def _select_voice(self, voice: str, variant: Optional[str]) -> None:
        # espeak ignores an unknown variant without an error, so check it here.
        if variant is not None and variant not in self._variants:
            raise EdgeasrError(f"espeak-ng has no voice variant {variant!r} (for voice {voice!r}); "
                               f"see Espeak().variants()")
        name = voice if variant is None else f"{voice}+{variant}"
        if _library().espeak_SetVoiceByName(name.encode()) != EE_OK:
            raise EdgeasrError(f"espeak-ng has no voice {voice!r}; English ones: {self.english_voices()}")

    def _set(self, parameter: int, value: int, label: str) -> None:
        if _library().espeak_SetParameter(parameter, int(value), 0) != EE_OK:
            raise EdgeasrError(f"espeak-ng refused {label}={value}")

    def _speak(self, text: str) -> np.ndarray:
        lib = _library()
        _chunks.clear()
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != EE_OK:
            raise EdgeasrError(f"espeak-ng failed to synthesise {text!r} (error {status})")
        lib.espeak_Synchronize()
        audio = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
        _chunks.clear()
        return audio.astype(np.int16, copy=False)
