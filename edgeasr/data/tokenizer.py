"""Text <-> CTC label ids. Index 0 is the CTC blank in every tokenizer.

    char            blank, space, apostrophe, a-z (29 tokens): the default
    sentencepiece   blank + a SentencePiece model trained on manifest text (optional package)

A tokenizer is a plain dict (`to_dict`), stored in the run directory and in the converted
model's metadata, so the runtime decodes ids without TensorFlow or SentencePiece: decoding is
joining the tokens (SentencePiece marks word starts with U+2581, which becomes a space).
"""
import base64
import re
from typing import Iterable, List, Sequence

from edgeasr.errors import EdgeasrError

BLANK = "<blank>"
UNKNOWN = "<unk>"          # SentencePiece's piece for text it cannot spell: never printed as text
WORD_START = "\u2581"
CHARACTERS = (" ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
KINDS = ("char", "sentencepiece")


def normalize_text(text: str) -> str:
    """Lower case, only letters, apostrophes and single spaces (what the char tokenizer can spell)."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower())
    return re.sub(r" +", " ", text).strip()


def drops_spoken_text(text: str) -> bool:
    """Whether normalize_text drops something that is spoken: digits ("room 101") or letters outside
    a-z ("café" -> "caf"); punctuation and case are not spoken."""
    return bool(re.search(r"[0-9]", text)) or any(ch.isalpha() and not ("a" <= ch.lower() <= "z") for ch in text)


class Tokenizer:
    """ids <-> text; `tokens[i]` is the text of id i, tokens[0] the blank."""

    def __init__(self, tokens: Sequence[str], kind: str = "char", model: bytes = b""):
        if kind not in KINDS:
            raise EdgeasrError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}")
        if not tokens or tokens[0] != BLANK:
            raise EdgeasrError("a tokenizer's first token must be the CTC blank")
        self.tokens, self.kind, self.model = list(tokens), kind, model
        self._index = {token: i for i, token in enumerate(self.tokens)}
        self._processor = None

    @property
    def vocab_size(self) -> int:
        """Output classes of the model, blank included."""
        return len(self.tokens)

    def encode(self, text: str) -> List[int]:
        text = normalize_text(text)
        if self.kind == "char":
            return [self._index[c] for c in text]
        return [i + 1 for i in self._sentencepiece().encode(text, out_type=int)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of label ids (blanks dropped; no CTC collapsing here, see runtime.ctc)."""
        return decode_tokens(self.tokens, ids)

    def unspellable(self, texts: Iterable[str]) -> List[str]:
        """The texts this tokenizer encodes with SentencePiece's <unk> (letters its model never saw:
        a model trained on them learns to emit <unk>). The char tokenizer spells all normalised text."""
        unknown = self._index.get(UNKNOWN)
        if self.kind == "char" or unknown is None:
            return []
        return [text for text in texts if unknown in self.encode(text)]

    def to_dict(self) -> dict:
        values = {"kind": self.kind, "tokens": self.tokens}
        if self.model:
            values["model"] = base64.b64encode(self.model).decode()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Tokenizer":
        try:
            model = base64.b64decode(values["model"]) if values.get("model") else b""
            return cls(values["tokens"], values.get("kind", "char"), model)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeasrError(f"not a tokenizer description ({exc})") from exc

    def _sentencepiece(self):
        if self._processor is None:
            spm = _import_sentencepiece()
            self._processor = spm.SentencePieceProcessor(model_proto=self.model)
        return self._processor


def decode_tokens(tokens: Sequence[str], ids: Iterable[int]) -> str:
    """Join the tokens of `ids` (blank and <unk> skipped); SentencePiece word marks become spaces.
    NumPy-free."""
    text = "".join(tokens[i] for i in ids if i != 0 and tokens[i] != UNKNOWN)
    return re.sub(r" +", " ", text.replace(WORD_START, " ")).strip()


def char_tokenizer() -> Tokenizer:
    return Tokenizer((BLANK,) + CHARACTERS, "char")


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 128) -> Tokenizer:
    """A unigram SentencePiece model over `texts` (normalised), blank prepended as id 0."""
    import io

    spm = _import_sentencepiece()
    texts = [normalize_text(t) for t in texts if normalize_text(t)]
    if not texts:
        raise EdgeasrError("no text to train a SentencePiece model on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=0, hard_vocab_limit=False, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    return Tokenizer([BLANK] + pieces, "sentencepiece", model.getvalue())


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 128) -> Tokenizer:
    if kind == "char":
        return char_tokenizer()
    if kind == "sentencepiece":
        return train_sentencepiece(texts, vocab_size)
    raise EdgeasrError(f"unknown tokenizer {kind!r}; choose {' or '.join(KINDS)}")


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError as exc:
        raise EdgeasrError("the sentencepiece tokenizer needs the sentencepiece package: "
                           "pip install sentencepiece") from exc
    return sentencepiece
