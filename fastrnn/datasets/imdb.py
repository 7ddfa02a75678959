"""The IMDB Large Movie Review Dataset, with the API and semantics of ``keras.datasets.imdb``.

Sources (``path`` argument, else ``$FASTRNN_IMDB_PATH``, else the cache folder, else a
download):

* the public archive ``aclImdb_v1.tar.gz`` or any tar(.gz/.bz2/.xz) with its layout
  (``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``), read by streaming the archive
  (nothing is extracted to disk); other members (``train/unsup``, ``*.feat``, ``urls_*``,
  ``README``) are ignored;
* the extracted ``aclImdb/`` folder (or a folder holding ``train/`` and ``test/``);
* Keras's ``imdb.npz`` (already tokenised; its word index is read from an
  ``imdb_word_index.json`` beside it, if present);
* Kaggle's "IMDB Dataset of 50K Movie Reviews": ``IMDB Dataset.csv`` (columns ``review``
  and ``sentiment`` = ``positive``/``negative``, 50,000 records) or the zip holding it. It
  has no train/test split: the first half of its records (25,000) is the training set, the
  second half the test set, in file order;
* a folder holding one of the above (``aclImdb_v1.tar.gz``, ``aclImdb_v1_labeled.tar.gz``,
  ``aclImdb/``, ``imdb.npz``, ``IMDB Dataset.csv``).

Reviews are tokenised as documented in :mod:`fastrnn.datasets.text` and ranked by
training-set frequency (rank 1 = most frequent). The tokenised corpus is cached in
``<cache>/imdb/`` (see :func:`fastrnn.datasets.download.cache_dir`), keyed by the source's
sha256 (archives, npz) or by its file listing with sizes and modification times (folders)
and by the tokeniser version, so later runs skip the 50,000 file reads.

Within a split, reviews are ordered negative then positive, each by numeric id (Kaggle's
CSV: each in file order), before
``load_data`` shuffles them with Keras's procedure (one ``np.random.RandomState(seed)``,
train shuffled first, then test).

Odd inputs: a review file that is not valid UTF-8 is decoded with U+FFFD replacement
characters (which separate words) and a ``UnicodeWarning`` names the files; an empty
review (or one with no words) is kept as an empty sequence (``[start_char]`` after
``load_data``); a missing ``train``/``test`` ``pos``/``neg`` folder is an
:class:`ImdbFormatError`; so are, in a CSV, a header without ``review`` and ``sentiment``,
a record with too few fields, a sentiment other than ``positive``/``negative`` (any case),
an empty file, and a zip holding no or several ``.csv`` files. Quoted fields may hold
commas, quotes and line breaks (the CSV module's rules); ``<br />`` inside reviews is
tokenised as in aclImdb.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .. import _env
from . import text as _text
from .download import DownloadError, cache_dir, download, sha256_file

__all__ = ["load_data", "get_word_index", "load_corpus", "find_source", "ImdbCorpus",
           "ImdbNotFoundError", "ImdbFormatError", "URL", "SHA256", "PATH_ENV"]

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
#: sha256 of the public aclImdb_v1.tar.gz (as published by several dataset libraries).
SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
PATH_ENV = "FASTRNN_IMDB_PATH"
OFFLINE_ENV = "FASTRNN_OFFLINE"
#: Names looked for inside a folder given as the source and inside the cache folder.
CSV_NAME = "IMDB Dataset.csv"  # Kaggle's
CANDIDATE_NAMES = (ARCHIVE_NAME, "aclImdb_v1_labeled.tar.gz", "aclImdb", "imdb.npz", CSV_NAME)

SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+)\.txt$")
_ID_RATING = re.compile(r"^(\d+)_(\d+)$")


class ImdbNotFoundError(FileNotFoundError):
    """No IMDB data was given, cached or downloadable."""


class ImdbFormatError(ValueError):
    """The given data does not have the aclImdb (or imdb.npz) structure."""


class ImdbCorpus:
    """The tokenised, ranked corpus: what Keras ships as ``imdb.npz`` + the word index.

    ``flat[split]`` (int32) holds the ranks of all reviews of ``split`` back to back;
    review ``i`` is ``flat[split][offsets[split][i]:offsets[split][i + 1]]``;
    ``labels[split]`` is 0 (negative) or 1 (positive); ``words[r - 1]`` is the word of
    rank ``r`` (``None`` when the source carried no word index).
    """

    def __init__(self, flat, offsets, labels, words=None, source="", stats=None):
        self.flat, self.offsets, self.labels = flat, offsets, labels
        self.words = words
        self.source = source
        self.stats = dict(stats or {})

    def num_reviews(self, split):
        return len(self.labels[split])

    def to_npz_dict(self):
        d = {}
        for s in SPLITS:
            d[f"{s}_flat"] = self.flat[s]
            d[f"{s}_offsets"] = self.offsets[s]
            d[f"{s}_labels"] = self.labels[s]
        d["words"] = np.array(self.words if self.words is not None else [], dtype=str)
        d["has_words"] = np.array(self.words is not None)
        d["stats"] = np.array(json.dumps(self.stats))
        return d

    @classmethod
    def from_npz(cls, f, source):
        words = [str(w) for w in f["words"]] if bool(f["has_words"]) else None
        return cls({s: f[f"{s}_flat"] for s in SPLITS}, {s: f[f"{s}_offsets"] for s in SPLITS},
                   {s: f[f"{s}_labels"] for s in SPLITS}, words, source,
                   json.loads(str(f["stats"])))


# --------------------------------------------------------------------------- locating

def _not_found_message(reason):
    cache = cache_dir()
    offline = _env.flag(OFFLINE_ENV)
    return (
        f"IMDB data not found{': ' + reason if reason else ''}.\n"
        f"fastrnn needs the Large Movie Review Dataset ({ARCHIVE_NAME}, about 80 MiB, "
        f"{URL}, sha256 {SHA256}) or Kaggle's \"IMDB Dataset of 50K Movie Reviews\" "
        f"({CSV_NAME}, or the zip it comes in). Give it in one of these ways:\n"
        f"  1. the `path` argument of load_data()/get_word_index(), or `--data PATH` of "
        f"fastrnn-imdb: the .tar.gz archive, the extracted aclImdb/ folder, Keras's "
        f"imdb.npz, Kaggle's {CSV_NAME} (or its zip), or a folder holding one of them;\n"
        f"  2. the environment variable {PATH_ENV}=PATH (same kinds of PATH);\n"
        f"  3. the cache folder {cache} (set by $FASTRNN_CACHE, else $XDG_CACHE_HOME/fastrnn):"
        f" put {ARCHIVE_NAME} (or aclImdb/, imdb.npz or {CSV_NAME}) there, e.g.\n"
        f"       mkdir -p {cache} && curl -L -o {cache / ARCHIVE_NAME} {URL}\n"
        f"  or let fastrnn download it (needs network access; {OFFLINE_ENV}=1, "
        f"download=False or --no-download forbid downloading"
        + (f"; {OFFLINE_ENV} is set now: unset it" if offline else "") + ").")


def _resolve_dir(d: Path):
    if (d / "train").is_dir() and (d / "test").is_dir():
        return d
    for name in CANDIDATE_NAMES:
        if (d / name).exists():
            return _resolve_given(d / name)
    return None


def _resolve_given(p: Path):
    if p.is_dir():
        found = _resolve_dir(p)
        if found is None:
            raise ImdbFormatError(
                f"{p} is a folder but holds neither train/ and test/ folders nor any of "
                f"{', '.join(CANDIDATE_NAMES)}")
        return found
    if p.is_file():
        return p
    raise ImdbNotFoundError(_not_found_message(f"{p} does not exist"))


def find_source(path=None, *, download_missing=True, progress=True) -> Path:
    """The file or folder the data will be read from (downloading it if needed)."""
    if path is not None:
        return _resolve_given(Path(path).expanduser())
    env = os.environ.get(PATH_ENV)
    if env:
        return _resolve_given(Path(env).expanduser())
    cache = cache_dir()
    if cache.is_dir():
        found = _resolve_dir(cache)
        if found is not None:
            return found
    offline = _env.flag(OFFLINE_ENV)
    if not download_missing or offline:
        why = "downloading is disabled" + (f" (${OFFLINE_ENV} is set)" if offline else "")
        raise ImdbNotFoundError(_not_found_message(f"nothing given or cached, and {why}"))
    try:
        return download(URL, cache / ARCHIVE_NAME, SHA256, progress=progress)
    except DownloadError as exc:
        raise ImdbNotFoundError(_not_found_message(f"nothing given or cached, and {exc}")) from exc


# --------------------------------------------------------------------------- reading

def _iter_tar(path: Path):
    # "r|*": one forward pass over the compressed stream, no seeking, nothing extracted.
    try:
        tar = tarfile.open(path, "r|*")
    except tarfile.TarError as exc:
        raise ImdbFormatError(f"{path} is not a readable tar archive: {exc}") from exc
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                m = _MEMBER.search(member.name)
                if m is None:
                    continue
                f = tar.extractfile(member)
                yield m.group(1), m.group(2), m.group(3), member.name, f.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImdbFormatError(f"{path} is a damaged archive: {exc}") from exc


_CSV_LABELS = {"negative": "neg", "positive": "pos"}


def _is_csv(path: Path):
    """Kaggle's CSV, or a zip holding it."""
    return path.is_file() and path.suffix.lower() in (".csv", ".zip")


def _csv_bytes(path: Path):
    """(the CSV's bytes, a name for messages): the file, or the one .csv inside a zip."""
    if path.suffix.lower() != ".zip":
        return path.read_bytes(), str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.lower().endswith(".csv")]
            if len(members) != 1:
                raise ImdbFormatError(
                    f"{path} holds {len(members)} .csv files ({', '.join(members) or 'none'}); "
                    f"expected one, Kaggle's {CSV_NAME}")
            return zf.read(members[0]), f"{path}:{members[0]}"
    except zipfile.BadZipFile as exc:
        raise ImdbFormatError(f"{path} is not a readable zip file: {exc}") from exc


def _iter_csv(path: Path):
    """Kaggle's CSV as (split, label, order stem, name, review bytes): the first half of the
    records is the training set, the second half the test set."""
    data, name = _csv_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        warnings.warn(f"{name} is not valid UTF-8: decoded with U+FFFD replacement characters",
                      UnicodeWarning, stacklevel=4)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ImdbFormatError(f"{name} is empty; expected Kaggle's {CSV_NAME}: a header "
                              f"'review,sentiment' and one review per record")
    cols = [h.strip().lower() for h in header]
    if "review" not in cols or "sentiment" not in cols:
        raise ImdbFormatError(f"{name}: the header must name the columns 'review' and "
                              f"'sentiment' (Kaggle's {CSV_NAME}), got {header}")
    ri, si = cols.index("review"), cols.index("sentiment")
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ImdbFormatError(f"{name} is not a readable CSV: {exc}") from exc
    if not rows:
        raise ImdbFormatError(f"{name} has a header but no reviews")
    half = (len(rows) + 1) // 2
    for i, row in enumerate(rows):
        where = f"{name}, record {i + 1}"
        if len(row) <= max(ri, si):
            raise ImdbFormatError(f"{where}: expected {len(header)} fields, got {len(row)}")
        label = _CSV_LABELS.get(row[si].strip().lower())
        if label is None:
            raise ImdbFormatError(f"{where}: sentiment must be 'positive' or 'negative', "
                                  f"got {row[si]!r}")
        yield ("train" if i < half else "test"), label, f"{i:07d}", where, \
            row[ri].encode("utf-8")


def _iter_folder(root: Path):
    for split in SPLITS:
        for label in LABELS:
            d = root / split / label
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.suffix == ".txt" and f.is_file():
                    yield split, label, f.stem, str(f), f.read_bytes()


def _folder_files(root: Path):
    out = []
    for split in SPLITS:
        for label in LABELS:
            d = root / split / label
            if d.is_dir():
                out.extend(f for f in d.iterdir() if f.suffix == ".txt")
    return sorted(out)


def _order_key(stem):
    m = _ID_RATING.match(stem)
    return (0, int(m.group(1)), int(m.group(2)), stem) if m else (1, 0, 0, stem)


def _read_reviews(source: Path, progress: bool):
    """{(split, label): [(order_key, tokens)]} plus stats; tokenises while reading."""
    from tqdm.auto import tqdm

    if source.is_dir():
        total = len(_folder_files(source))
        items = _iter_folder(source)
    elif _is_csv(source):
        total = None
        items = _iter_csv(source)
    else:
        total = None
        items = _iter_tar(source)
    groups = {(s, lab): [] for s in SPLITS for lab in LABELS}
    bad_utf8, empty = [], 0
    with tqdm(total=total, unit=" reviews", desc=f"read+tokenise {source.name}",
              disable=not progress, mininterval=0.5) as bar:
        for split, label, stem, name, raw in items:
            try:
                review = raw.decode("utf-8")
            except UnicodeDecodeError:
                review = raw.decode("utf-8", errors="replace")
                bad_utf8.append(name)
            tokens = _text.tokenize(review)
            empty += not tokens
            groups[(split, label)].append((_order_key(stem), tokens))
            bar.update(1)
    missing = [f"{s}/{lab}" for (s, lab), revs in groups.items() if not revs]
    if len(missing) == len(groups):
        raise ImdbFormatError(
            f"{source} holds no reviews in the aclImdb layout "
            f"(<any>/{{train,test}}/{{pos,neg}}/<id>_<rating>.txt)")
    if missing and _is_csv(source):
        raise ImdbFormatError(
            f"{source} has no {' and no '.join(missing)} reviews (its first half of records "
            f"is the training set, the second half the test set)")
    if missing:
        raise ImdbFormatError(
            f"{source} has no reviews in {', '.join(missing)}; expected "
            f"aclImdb/{{train,test}}/{{pos,neg}}/<id>_<rating>.txt (the public "
            f"{ARCHIVE_NAME} has 12,500 in each)")
    if bad_utf8:
        shown = ", ".join(bad_utf8[:5]) + (", ..." if len(bad_utf8) > 5 else "")
        warnings.warn(
            f"{len(bad_utf8)} review file(s) in {source} are not valid UTF-8 and were decoded "
            f"with U+FFFD replacement characters: {shown}", UnicodeWarning, stacklevel=3)
    return groups, {"non_utf8_files": len(bad_utf8), "empty_reviews": empty}


def _tokenise_source(source: Path, progress: bool) -> ImdbCorpus:
    groups, stats = _read_reviews(source, progress)
    token_lists, labels = {}, {}
    for split in SPLITS:
        tl, lab = [], []
        for label, y in LABELS.items():  # negative first, then positive, each by id
            revs = sorted(groups[(split, label)], key=lambda kv: kv[0])
            tl.extend(tokens for _, tokens in revs)
            lab.extend([y] * len(revs))
        token_lists[split], labels[split] = tl, np.array(lab, dtype=np.int64)
    words = _text.rank_words(token_lists["train"])
    rank = {w: i + 1 for i, w in enumerate(words)}
    flat, offsets = {}, {}
    for split in SPLITS:
        flat[split], offsets[split] = _text.encode(token_lists[split], rank)
    stats.update({f"{s}_reviews": len(labels[s]) for s in SPLITS})
    stats["vocabulary"] = len(words)
    return ImdbCorpus(flat, offsets, labels, words, str(source), stats)


def _read_keras_npz(path: Path) -> ImdbCorpus:
    try:
        # Keras stores each split as an object array of lists: that needs pickle.
        with np.load(path, allow_pickle=True) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise ImdbFormatError(f"{path} lacks the arrays {missing} of Keras's imdb.npz")
            data = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError) as exc:
        if isinstance(exc, ImdbFormatError):
            raise
        raise ImdbFormatError(f"{path} is not a readable .npz file: {exc}") from exc
    flat, offsets, labels = {}, {}, {}
    for split in SPLITS:
        seqs = data[f"x_{split}"]
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets[split] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat[split] = (np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
                       if len(seqs) and offsets[split][-1] else np.zeros(0, np.int32))
        labels[split] = np.asarray(data[f"y_{split}"], dtype=np.int64)
        if len(labels[split]) != len(seqs):
            raise ImdbFormatError(f"{path}: x_{split} and y_{split} differ in length")
    words = None
    index_file = path.with_name("imdb_word_index.json")
    if index_file.is_file():
        index = json.loads(index_file.read_text(encoding="utf-8"))
        words = [None] * max(index.values(), default=0)
        for w, r in index.items():
            words[r - 1] = w
    stats = {f"{s}_reviews": len(labels[s]) for s in SPLITS}
    return ImdbCorpus(flat, offsets, labels, words, str(path), stats)


# --------------------------------------------------------------------------- caching

_key_memo = {}


def _source_key(source: Path) -> str:
    """Content key of a source; a file is hashed once per process per (path, size, mtime)."""
    if source.is_dir():  # its own mtime misses edits below it: list it every time
        return _compute_source_key(source)
    st = source.stat()
    memo_key = (str(source.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _key_memo:
        _key_memo[memo_key] = _compute_source_key(source)
    return _key_memo[memo_key]


def _compute_source_key(source: Path) -> str:
    import hashlib

    if source.is_dir():
        h = hashlib.sha256()
        for f in _folder_files(source):
            st = f.stat()
            h.update(f"{f.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir-" + h.hexdigest()
    return sha256_file(source)


_memo = {}


def load_corpus(path=None, *, cache=True, download=True, progress=True) -> ImdbCorpus:
    """Find, read, tokenise and rank the reviews, using the on-disk cache when it can.

    ``corpus.stats`` records ``seconds`` (time spent here) and ``cache`` (``"hit"``,
    ``"written"``, ``"off"`` or ``"unwritable"``).
    """
    t0 = time.perf_counter()
    source = find_source(path, download_missing=download, progress=progress)
    if source.is_file() and source.suffix == ".npz":
        corpus = _read_keras_npz(source)
        corpus.stats.update(cache="off", seconds=time.perf_counter() - t0)
        return corpus
    if source.is_file() and not _is_csv(source) and not tarfile.is_tarfile(source):
        raise ImdbFormatError(
            f"{source} is neither a tar archive, an aclImdb folder, a Keras imdb.npz nor "
            f"Kaggle's {CSV_NAME} (or its zip)")
    key = _source_key(source)
    memo_key = (key, _text.TOKENIZER_VERSION)
    if memo_key in _memo:
        return _memo[memo_key]
    cache_file = cache_dir() / "imdb" / f"tokens-v{_text.TOKENIZER_VERSION}-{key[:32]}.npz"
    if cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as f:
                corpus = ImdbCorpus.from_npz(f, str(source))
            corpus.stats.update(cache="hit", cache_file=str(cache_file),
                                seconds=time.perf_counter() - t0)
            _memo[memo_key] = corpus
            return corpus
        except Exception as exc:  # a damaged cache entry is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable cache file {cache_file}: {exc}", stacklevel=2)
    corpus = _tokenise_source(source, progress)
    status = "off"
    if cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **corpus.to_npz_dict())
            os.replace(tmp, cache_file)
            status = "written"
        except OSError as exc:
            warnings.warn(f"could not write the IMDB cache {cache_file}: {exc}", stacklevel=2)
            status = "unwritable"
    corpus.stats.update(cache=status, cache_file=str(cache_file),
                        seconds=time.perf_counter() - t0)
    _memo[memo_key] = corpus
    return corpus


# --------------------------------------------------------------------------- Keras API

def _gather(flat, offsets, order):
    """Reviews ``order`` of (flat, offsets) back to back: (flat', offsets')."""
    lengths = np.diff(offsets)[order]
    new_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = np.repeat(offsets[:-1][order] - new_off[:-1], lengths) + np.arange(new_off[-1])
    return flat[idx], new_off


def _split_lists(flat, offsets):
    values = flat.tolist()
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def load_data(path=None, num_words=10000, skip_top=0, maxlen=None, seed=113, start_char=1,
              oov_char=2, index_from=3, *, cache=True, download=True, progress=True):
    """Load IMDB as ``(x_train, y_train), (x_test, y_test)``, like ``keras.datasets.imdb``.

    ``x_*`` are lists of reviews, each a list of ints; ``y_*`` int64 arrays (1 = positive).
    Semantics follow Keras: both splits shuffled with ``np.random.RandomState(seed)``
    (train, then test); word ranks shifted by ``index_from`` and each review prefixed by
    ``start_char`` (when not None); with ``maxlen``, reviews whose length (start mark
    included) is ``>= maxlen`` are dropped (``ValueError`` if a split ends up empty); then
    every id ``w`` outside ``skip_top <= w < num_words`` becomes ``oov_char`` (or is dropped
    when ``oov_char`` is None). As in Keras, this test applies to the shifted ids, so
    ``num_words=10000`` keeps ids below 10000 (ranks up to 9996 with ``index_from=3``), and
    it applies to ``start_char`` too. ``num_words=None`` keeps every word, as Keras
    documents (Keras's code uses the largest id as an exclusive bound and so turns the
    rarest word(s) into ``oov_char``; we don't).

    Unlike Keras, ``num_words`` defaults to 10000. ``path`` is the data source (see the
    module docstring), not a cache file name. ``cache``/``download``/``progress`` control
    the tokenised-corpus cache, downloading and tqdm bars.
    """
    corpus = load_corpus(path, cache=cache, download=download, progress=progress)
    rng = np.random.RandomState(seed)
    parts = {}
    for split in SPLITS:
        order = np.arange(corpus.num_reviews(split))
        rng.shuffle(order)
        flat, off = _gather(corpus.flat[split].astype(np.int64), corpus.offsets[split], order)
        labels = corpus.labels[split][order]
        if index_from:
            flat = flat + index_from
        if start_char is not None:
            n = len(off) - 1
            out = np.empty(len(flat) + n, dtype=np.int64)
            starts = off[:-1] + np.arange(n)
            mask = np.ones(len(out), dtype=bool)
            mask[starts] = False
            out[starts] = start_char
            out[mask] = flat
            flat, off = out, off + np.arange(n + 1)
        if maxlen:
            keep = np.flatnonzero(np.diff(off) < maxlen)
            flat, off = _gather(flat, off, keep)
            labels = labels[keep]
        parts[split] = [flat, off, labels]
    if maxlen and (len(parts["train"][2]) == 0 or len(parts["test"][2]) == 0):
        raise ValueError(f"After filtering for sequences shorter than maxlen={maxlen}, "
                         "no sequence was kept. Increase maxlen.")
    for split, (flat, off, labels) in parts.items():
        out_of_range = flat < skip_top
        if num_words:
            out_of_range |= flat >= num_words
        if oov_char is not None:
            flat = np.where(out_of_range, oov_char, flat)
        elif out_of_range.any():
            seg = np.repeat(np.arange(len(off) - 1), np.diff(off))
            kept = ~out_of_range
            lengths = np.bincount(seg[kept], minlength=len(off) - 1)
            flat = flat[kept]
            off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        parts[split] = (_split_lists(flat, off), labels)
    return parts["train"], parts["test"]


def get_word_index(path=None, *, cache=True, download=True, progress=True) -> dict:
    """``{word: rank}`` (rank 1 = most frequent in training), like Keras's word index.

    Decode ``load_data`` output with ``{rank + index_from: word}``.
    """
    corpus = load_corpus(path, cache=cache, download=download, progress=progress)
    if corpus.words is None:
        raise ImdbFormatError(
            f"{corpus.source} carries no word index: put Keras's imdb_word_index.json next "
            f"to the imdb.npz, or use the aclImdb archive/folder")
    return {w: i + 1 for i, w in enumerate(corpus.words) if w is not None}
