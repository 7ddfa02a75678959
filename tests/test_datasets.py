"""IMDB loader and pad_sequences: fixture archives/folders built here, no network, no ../shared."""
import io
import json
import tarfile
import urllib.error
import warnings

import numpy as np
import pytest

from fastrnn.datasets import download as dl
from fastrnn.datasets import imdb, pad_sequences
from fastrnn.datasets.imdb import ImdbFormatError, ImdbNotFoundError
from fastrnn.datasets.text import tokenize

from fixtures.imdb_fixture import make_reviews, write_keras_npz, write_tar, write_tree


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache folder, no data env vars, an empty memo, no network."""
    monkeypatch.setenv("FASTRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTRNN_IMDB_PATH", raising=False)
    monkeypatch.delenv("FASTRNN_OFFLINE", raising=False)
    monkeypatch.setattr(imdb, "_memo", {})
    monkeypatch.setattr(imdb, "_key_memo", {})

    def no_network(url, timeout):
        raise AssertionError(f"a test tried to download {url}")
    monkeypatch.setattr(dl, "_urlopen", no_network)


@pytest.fixture
def reviews():
    return make_reviews(per_class=6, seed=1)


@pytest.fixture
def archive(tmp_path, reviews):
    return write_tar(tmp_path / "aclImdb_v1.tar.gz", reviews)


def load(path, **kw):
    kw.setdefault("progress", False)
    return imdb.load_data(path, **kw)


def decode_words(corpus, split):
    """The words of each review of the corpus, in stored order."""
    f, o = corpus.flat[split], corpus.offsets[split]
    return [[corpus.words[r - 1] for r in f[o[i]:o[i + 1]]] for i in range(len(o) - 1)]


# ----------------------------------------------------------------------------- tokenise

@pytest.mark.parametrize("text, words", [
    ("Great movie!<br /><br />Loved it.", ["great", "movie", "loved", "it"]),
    ("I don't like 'quoted' words", ["i", "don't", "like", "quoted", "words"]),
    ("well-made, 10/10", ["well", "made", "10", "10"]),
    ("Caf\u00e9 CRÈME snake_case", ["caf\u00e9", "crème", "snake", "case"]),
    ("a < b and c > d <i>it</i>", ["a", "b", "and", "c", "d", "it"]),
    ("Tom &amp; Jerry&#39;s", ["tom", "jerry's"]),
    ("", []),
    ("... !!! ???", []),
])
def test_tokenize(text, words):
    assert tokenize(text) == words


# ----------------------------------------------------------------------------- reading

def test_archive_and_folder_give_identical_data(tmp_path, reviews, archive):
    folder = write_tree(tmp_path / "extracted", reviews)
    a = load(archive, num_words=None)
    b = load(folder, num_words=None)
    assert a[0][0] == b[0][0] and a[1][0] == b[1][0]
    np.testing.assert_array_equal(a[0][1], b[0][1])
    # the parent folder of aclImdb/ and a folder holding the archive work as well
    c = load(tmp_path / "extracted", num_words=None)
    assert c[0][0] == a[0][0]
    assert imdb.find_source(tmp_path) == archive


def test_corpus_contents(archive, reviews):
    corpus = imdb.load_corpus(archive, progress=False)
    assert corpus.num_reviews("train") == 12 and corpus.num_reviews("test") == 12
    # negative first, then positive, each by numeric id
    np.testing.assert_array_equal(corpus.labels["train"], [0] * 6 + [1] * 6)
    expected = [tokenize(data.decode()) for _, data in reviews[("train", "neg")]]
    assert decode_words(corpus, "train")[:6] == expected
    # ignored members: unsup, urls_*, README
    assert "zzzunsup" not in corpus.words
    # ranked by training count, ties alphabetically
    from collections import Counter
    counts = Counter(w for label in ("neg", "pos")
                     for _, d in reviews[("train", label)] for w in tokenize(d.decode()))
    assert corpus.words == sorted(counts, key=lambda w: (-counts[w], w))


def test_word_index_decodes_load_data(archive):
    (x_train, y_train), _ = load(archive, num_words=None, start_char=1, oov_char=2, index_from=3)
    index = imdb.get_word_index(archive)
    assert min(index.values()) == 1
    inverted = {r + 3: w for w, r in index.items()}
    corpus = imdb.load_corpus(archive, progress=False)
    all_train = sorted(map(tuple, decode_words(corpus, "train")))
    decoded = sorted(tuple(inverted[i] for i in x[1:]) for x in x_train)
    assert decoded == all_train
    assert all(x[0] == 1 for x in x_train)
    assert set(y_train.tolist()) == {0, 1} and y_train.dtype == np.int64


def test_test_only_words_are_skipped(tmp_path, reviews):
    reviews[("test", "pos")][0] = ("0_9.txt", b"zzzneverintrain great")
    path = write_tar(tmp_path / "a.tar.gz", reviews)
    corpus = imdb.load_corpus(path, progress=False)
    assert "zzzneverintrain" not in corpus.words
    assert any(len(r) == 1 for r in decode_words(corpus, "test"))


def test_missing_split_is_an_error(tmp_path, reviews):
    del reviews[("test", "neg")]
    with pytest.raises(ImdbFormatError, match="test/neg"):
        load(write_tar(tmp_path / "a.tar.gz", reviews))
    with pytest.raises(ImdbFormatError, match="test/neg"):
        load(write_tree(tmp_path / "t", reviews))


def test_non_utf8_review_is_replaced_and_named(tmp_path, reviews):
    reviews[("train", "pos")][2] = ("2_8.txt", "Great caf\u00e9 film".encode("latin-1"))
    path = write_tar(tmp_path / "a.tar.gz", reviews)
    with pytest.warns(UnicodeWarning, match=r"train/pos/2_8\.txt"):
        corpus = imdb.load_corpus(path, progress=False)
    assert corpus.stats["non_utf8_files"] == 1
    assert "caf" in corpus.words  # U+FFFD separated 'caf' from the lost byte


def test_empty_review_is_kept(tmp_path, reviews):
    reviews[("train", "neg")][0] = ("0_1.txt", b"")
    reviews[("test", "pos")][0] = ("0_10.txt", b"?!... <br />")
    path = write_tar(tmp_path / "a.tar.gz", reviews)
    (x_train, y_train), (x_test, y_test) = load(path)
    assert len(x_train) == 12 and len(x_test) == 12
    assert [1] in x_train and [1] in x_test
    assert imdb.load_corpus(path, progress=False).stats["empty_reviews"] == 2


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"this is not a tar archive")
    with pytest.raises(ImdbFormatError, match="neither a tar archive"):
        load(bogus)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("other/file.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ImdbFormatError, match="no reviews in the aclImdb layout"):
        load(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ImdbFormatError, match="holds neither"):
        load(tmp_path / "nothing")
    with pytest.raises(ImdbNotFoundError, match="does not exist"):
        load(tmp_path / "missing.tar.gz")


def test_truncated_archive_is_a_format_error(tmp_path, archive):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ImdbFormatError):
        load(cut)


# ----------------------------------------------------------------------------- Keras semantics

def test_shuffle_follows_keras(archive):
    corpus = imdb.load_corpus(archive, progress=False)
    (x_train, y_train), (x_test, y_test) = load(archive, num_words=None, seed=7)
    rng = np.random.RandomState(7)
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        order = np.arange(corpus.num_reviews(split))
        rng.shuffle(order)
        f, o = corpus.flat[split], corpus.offsets[split]
        expect = [[1] + [int(r) + 3 for r in f[o[i]:o[i + 1]]] for i in order]
        assert xs == expect
        np.testing.assert_array_equal(ys, corpus.labels[split][order])
    again = load(archive, num_words=None, seed=7)
    other = load(archive, num_words=None, seed=8)
    assert again[0][0] == x_train and other[0][0] != x_train


def test_num_words_skip_top_oov(archive):
    (x_all, _), (t_all, _) = load(archive, num_words=None)
    (x, _), (t, _) = load(archive, num_words=10, skip_top=5)
    for full, cut in ((x_all, x), (t_all, t)):
        for a, b in zip(full, cut):
            assert len(a) == len(b)
            assert b == [w if 5 <= w < 10 else 2 for w in a]  # start_char 1 < 5: OOV too
    (x, _), _ = load(archive, num_words=10, oov_char=None)
    assert x == [[w for w in a if w < 10] for a in x_all]
    assert max(max(s) for s in x) < 10


def test_start_char_and_index_from(archive):
    (base, _), _ = load(archive, num_words=None, start_char=None, index_from=0)
    (x, _), _ = load(archive, num_words=None, start_char=None, index_from=3)
    assert x == [[w + 3 for w in s] for s in base]
    (x, _), _ = load(archive, num_words=None, start_char=9, index_from=0)
    assert x == [[9] + s for s in base]


def test_maxlen_filters_like_keras(archive):
    (x_all, y_all), (t_all, _) = load(archive, num_words=None)
    lengths = sorted(len(s) for s in x_all)
    maxlen = lengths[len(lengths) // 2]
    (x, y), (t, _) = load(archive, num_words=None, maxlen=maxlen)
    assert x == [s for s in x_all if len(s) < maxlen]  # strict: len == maxlen is dropped
    np.testing.assert_array_equal(y, [yy for s, yy in zip(x_all, y_all) if len(s) < maxlen])
    assert t == [s for s in t_all if len(s) < maxlen]
    with pytest.raises(ValueError, match="Increase maxlen"):
        load(archive, maxlen=2)


# ----------------------------------------------------------------------------- imdb.npz

def test_keras_npz(tmp_path):
    path, (x_train, y_train, x_test, y_test) = write_keras_npz(tmp_path / "imdb.npz")
    (xa, ya), (xb, yb) = load(path, num_words=15, seed=3)
    rng = np.random.RandomState(3)
    for xs, ys, x_src, y_src in ((xa, ya, x_train, y_train), (xb, yb, x_test, y_test)):
        order = np.arange(len(x_src))
        rng.shuffle(order)
        assert xs == [[1] + [w + 3 if w + 3 < 15 else 2 for w in x_src[i]] for i in order]
        np.testing.assert_array_equal(ys, y_src[order])
    index = imdb.get_word_index(path)
    assert index["w1"] == 1 and len(index) == 20
    # found through a folder too
    assert imdb.find_source(tmp_path) == path


def test_keras_npz_without_word_index_or_arrays(tmp_path):
    path, _ = write_keras_npz(tmp_path / "imdb.npz", word_index=False)
    load(path)
    with pytest.raises(ImdbFormatError, match="imdb_word_index.json"):
        imdb.get_word_index(path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros(3))
    with pytest.raises(ImdbFormatError, match="y_train"):
        load(bad)


# ----------------------------------------------------------------------------- caching

def test_cache_written_then_hit(tmp_path, archive, monkeypatch):
    first = imdb.load_corpus(archive, progress=False)
    assert first.stats["cache"] == "written"
    cached = list((tmp_path / "cache" / "imdb").glob("tokens-v*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(imdb, "_memo", {})

    def boom(*a, **k):
        raise AssertionError("re-tokenised although cached")
    monkeypatch.setattr(imdb, "_tokenise_source", boom)
    second = imdb.load_corpus(archive, progress=False)
    assert second.stats["cache"] == "hit"
    assert second.words == first.words
    for s in ("train", "test"):
        np.testing.assert_array_equal(second.flat[s], first.flat[s])
        np.testing.assert_array_equal(second.offsets[s], first.offsets[s])
        np.testing.assert_array_equal(second.labels[s], first.labels[s])


def test_cache_keyed_by_content(tmp_path, reviews, monkeypatch):
    a = write_tar(tmp_path / "a" / "aclImdb_v1.tar.gz", reviews)
    imdb.load_corpus(a, progress=False)
    reviews[("train", "pos")][0] = ("0_9.txt", b"entirely new words here")
    b = write_tar(tmp_path / "b" / "aclImdb_v1.tar.gz", reviews)
    corpus = imdb.load_corpus(b, progress=False)
    assert corpus.stats["cache"] == "written" and "entirely" in corpus.words
    assert len(list((tmp_path / "cache" / "imdb").glob("tokens-v*.npz"))) == 2


def test_damaged_cache_is_rebuilt(tmp_path, archive, monkeypatch):
    first = imdb.load_corpus(archive, progress=False)
    cache_file = next((tmp_path / "cache" / "imdb").glob("tokens-v*.npz"))
    cache_file.write_bytes(b"garbage")
    monkeypatch.setattr(imdb, "_memo", {})
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = imdb.load_corpus(archive, progress=False)
    assert again.words == first.words and again.stats["cache"] == "written"


def test_cache_off(tmp_path, archive):
    assert imdb.load_corpus(archive, cache=False, progress=False).stats["cache"] == "off"
    assert not (tmp_path / "cache" / "imdb").exists()


def test_cache_folder_is_searched(tmp_path, reviews, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    write_tar(cache / "aclImdb_v1.tar.gz", reviews)
    (x, _), _ = load(None)
    assert len(x) == 12


def test_env_var_path(tmp_path, archive, monkeypatch):
    monkeypatch.setenv("FASTRNN_IMDB_PATH", str(archive))
    assert imdb.find_source() == archive
    monkeypatch.setenv("FASTRNN_IMDB_PATH", str(tmp_path / "nope"))
    with pytest.raises(ImdbNotFoundError, match="nope"):
        imdb.find_source()


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert dl.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FASTRNN_CACHE")
    assert dl.cache_dir() == tmp_path / "x" / "fastrnn"


# ----------------------------------------------------------------------------- download / offline

def _check_not_found_message(msg, cache):
    for needed in ("aclImdb_v1.tar.gz", imdb.URL, "FASTRNN_IMDB_PATH", str(cache), "--data",
                   "imdb.npz"):
        assert needed in msg, needed


def test_offline_error_names_the_ways(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(dl, "_urlopen", offline)
    with pytest.raises(ImdbNotFoundError) as err:
        load(None)
    _check_not_found_message(str(err.value), tmp_path / "cache")
    assert "name resolution" in str(err.value)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_offline_env_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_OFFLINE", "1")
    with pytest.raises(ImdbNotFoundError, match="FASTRNN_OFFLINE") as err:
        load(None)  # the autouse fixture fails the test if a download is attempted
    _check_not_found_message(str(err.value), tmp_path / "cache")
    with pytest.raises(ImdbNotFoundError, match="disabled"):
        load(None, download=False)


class FakeResponse(io.BytesIO):
    def __init__(self, data, length=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def test_download_checked_and_cached(tmp_path, archive, monkeypatch):
    data = archive.read_bytes()
    calls = []

    def serve(url, timeout):
        calls.append(url)
        return FakeResponse(data)
    monkeypatch.setattr(dl, "_urlopen", serve)
    monkeypatch.setattr(imdb, "SHA256", dl.sha256_file(archive))
    (x, _), _ = load(None)
    assert calls == [imdb.URL] and len(x) == 12
    assert (tmp_path / "cache" / "aclImdb_v1.tar.gz").read_bytes() == data
    load(None)
    assert len(calls) == 1  # the second call finds the cached archive


def test_download_bad_checksum_keeps_nothing(tmp_path, archive, monkeypatch):
    monkeypatch.setattr(dl, "_urlopen", lambda url, timeout: FakeResponse(archive.read_bytes()))
    with pytest.raises(ImdbNotFoundError, match="sha256"):
        load(None)
    assert not list((tmp_path / "cache").iterdir())


def test_download_truncated(tmp_path, archive, monkeypatch):
    data = archive.read_bytes()
    monkeypatch.setattr(dl, "_urlopen", lambda url, timeout: FakeResponse(data[:100], len(data)))
    with pytest.raises(dl.DownloadError, match="stopped after 100"):
        dl.download("http://example.invalid/x", tmp_path / "x.tar.gz", progress=False)
    assert not list(tmp_path.glob("x.tar.gz*"))


# ----------------------------------------------------------------------------- pad_sequences

SEQ = [[1], [2, 3], [4, 5, 6]]


@pytest.mark.parametrize("kwargs, expected", [
    # the examples of Keras's documentation
    ({}, [[0, 0, 1], [0, 2, 3], [4, 5, 6]]),
    ({"value": -1}, [[-1, -1, 1], [-1, 2, 3], [4, 5, 6]]),
    ({"padding": "post"}, [[1, 0, 0], [2, 3, 0], [4, 5, 6]]),
    ({"maxlen": 2}, [[0, 1], [2, 3], [5, 6]]),
    # and the other combinations
    ({"maxlen": 2, "truncating": "post"}, [[0, 1], [2, 3], [4, 5]]),
    ({"maxlen": 2, "padding": "post", "truncating": "post"}, [[1, 0], [2, 3], [4, 5]]),
    ({"maxlen": 4}, [[0, 0, 0, 1], [0, 0, 2, 3], [0, 4, 5, 6]]),
    ({"maxlen": 1}, [[1], [3], [6]]),
    ({"maxlen": 0}, [[], [], []]),
])
def test_pad_sequences_keras_examples(kwargs, expected):
    out = pad_sequences(SEQ, **kwargs)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.int32).reshape(3, -1))


def test_pad_sequences_empty_inputs():
    out = pad_sequences([[], [1, 2], []], maxlen=3)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 1, 2], [0, 0, 0]])
    assert pad_sequences([]).shape == (0, 0)
    assert pad_sequences([], maxlen=5).shape == (0, 5)
    assert pad_sequences([[], []]).shape == (2, 0)


def test_pad_sequences_dtypes_and_values():
    out = pad_sequences([[0.5], [1.5, 2.5]], dtype="float32", value=-0.25)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-0.25, 0.5], [1.5, 2.5]])
    # values are cast to dtype (Keras: np.asarray(trunc, dtype=dtype))
    np.testing.assert_array_equal(pad_sequences([[1.7]], maxlen=2), [[0, 1]])
    out = pad_sequences([["a"], ["b", "c"]], dtype=object, value="<pad>")
    assert out.tolist() == [["<pad>", "a"], ["b", "c"]]
    with pytest.raises(ValueError, match="dtype=object"):
        pad_sequences([["a"]], value="x")


def test_pad_sequences_inputs():
    arrays = [np.array([1, 2, 3, 4]), np.array([5])]
    np.testing.assert_array_equal(pad_sequences(arrays, maxlen=3), [[2, 3, 4], [0, 0, 5]])
    np.testing.assert_array_equal(pad_sequences(((1, 2), (3,))), [[1, 2], [0, 3]])
    np.testing.assert_array_equal(pad_sequences(np.array([[1, 2], [3, 4]]), maxlen=3),
                                  [[0, 1, 2], [0, 3, 4]])
    # sample shape taken from the first non-empty sequence
    out = pad_sequences([[], [[1, 2], [3, 4]]], maxlen=3)
    assert out.shape == (2, 3, 2)
    np.testing.assert_array_equal(out[1], [[0, 0], [1, 2], [3, 4]])


@pytest.mark.parametrize("args, kwargs, match", [
    ((SEQ,), {"padding": "middle"}, "Padding type"),
    ((SEQ,), {"truncating": "both"}, "Truncating type"),
    ((SEQ,), {"maxlen": -1}, "maxlen"),
    ((SEQ,), {"maxlen": 2.5}, "maxlen"),
    (([[1], 2],), {}, "non-iterable"),
    ((iter(SEQ),), {}, "iterable"),
    (([[[1, 2]], [[1, 2, 3]]],), {}, "Shape of sample"),
])
def test_pad_sequences_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pad_sequences(*args, **kwargs)


def test_padding_warning_free(archive):
    (x, _), _ = load(archive)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pad_sequences(x, maxlen=500)
    assert out.shape == (12, 500) and (out[:, 0] == 0).all()
    lengths = [len(s) for s in x]
    assert ((out != 0).sum(1) == lengths).all()  # ids are never 0


def test_json_stats_roundtrip(archive):
    corpus = imdb.load_corpus(archive, progress=False)
    assert json.loads(json.dumps(corpus.stats))["train_reviews"] == 12


# ----------------------------------------------------------------------------- Kaggle CSV

def _csv_rows_like_aclimdb(reviews):
    """(review, sentiment) rows: train then test, each negative then positive by id, as
    the aclImdb loader orders them; the CSV's first half is then aclImdb's training set."""
    def by_id(files):
        return sorted(files, key=lambda f: int(f[0].split("_")[0]))
    rows = []
    for split in ("train", "test"):
        for label, word in (("neg", "negative"), ("pos", "positive")):
            rows += [(data.decode("utf-8"), word) for _, data in by_id(reviews[(split, label)])]
    return rows


def _write_csv(path, rows, header=("review", "sentiment")):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def test_kaggle_csv_gives_aclimdb_texts_and_labels(tmp_path, reviews, archive):
    csv_path = _write_csv(tmp_path / "IMDB Dataset.csv", _csv_rows_like_aclimdb(reviews))
    a = imdb.load_corpus(archive, progress=False)
    b = imdb.load_corpus(csv_path, progress=False)
    assert a.words == b.words
    for split in ("train", "test"):
        np.testing.assert_array_equal(a.labels[split], b.labels[split])
        np.testing.assert_array_equal(a.flat[split], b.flat[split])
        np.testing.assert_array_equal(a.offsets[split], b.offsets[split])
    # the Kaggle zip holding it, and a folder holding the CSV
    import zipfile
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as zf:
        zf.write(csv_path, "IMDB Dataset.csv")
    c = imdb.load_corpus(tmp_path / "archive.zip", progress=False)
    np.testing.assert_array_equal(c.flat["train"], a.flat["train"])
    folder = tmp_path / "kaggle"
    folder.mkdir()
    _write_csv(folder / "IMDB Dataset.csv", _csv_rows_like_aclimdb(reviews))
    (x_tr, y_tr), _ = load(folder)
    (x_tr2, y_tr2), _ = load(archive)
    assert [list(x) for x in x_tr] == [list(x) for x in x_tr2]
    np.testing.assert_array_equal(y_tr, y_tr2)


def test_kaggle_csv_quoting_and_line_breaks(tmp_path):
    rows = [('Great, "really" great.<br /><br />Loved\nit', "positive"),
            ("Bad, bad film", "NEGATIVE"), ("Great\r\nfilm", "positive"), ("Bad", "negative")]
    path = _write_csv(tmp_path / "k.csv", rows)
    corpus = imdb.load_corpus(path, progress=False)
    assert decode_words(corpus, "train") == [["bad", "bad", "film"],
                                             ["great", "really", "great", "loved", "it"]]
    assert decode_words(corpus, "test") == [["bad"], ["great", "film"]]
    np.testing.assert_array_equal(corpus.labels["train"], [0, 1])


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"text,label\nGood film,positive\n", "header must name the columns 'review' and"),
    (b"review,sentiment\n", "no reviews"),
    (b"review,sentiment\nGood,positive\nBad,neutral\n", "record 2: sentiment must be"),
    (b"review,sentiment\nGood\n", "record 1: expected 2 fields"),
    (b"review,sentiment\nGood,positive\nBad,positive\n", "no test/neg"),
])
def test_kaggle_csv_errors(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ImdbFormatError, match=match):
        imdb.load_corpus(path, progress=False)


def test_kaggle_zip_errors(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a.csv", "review,sentiment\n")
        zf.writestr("b.csv", "review,sentiment\n")
    with pytest.raises(ImdbFormatError, match="holds 2 .csv files"):
        imdb.load_corpus(tmp_path / "two.zip", progress=False)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ImdbFormatError, match="not a readable zip"):
        imdb.load_corpus(tmp_path / "bad.zip", progress=False)
