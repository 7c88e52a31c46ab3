#!/usr/bin/env python3
"""Writes a folder of class folders as the shards other programs make, for tests/records.rs.

    python3 tests/write_records.py SRC OUT

SRC holds SRC/train/<class>/*.png and SRC/test/<class>/*.png. Rows and samples follow the
order gpu-train lists the folders in (classes sorted, files sorted), so that each set loads
to exactly the folders' pictures. Written under OUT:

  hf/data/train-0000{0,1}-of-00002.parquet  Hugging Face `datasets` (Image + ClassLabel
                                            features), pictures embedded as bytes
  hf/data/test-00000-of-00001.parquet       the same, pictures as paths only (bytes null),
                                            relative to the file's folder
  hf-one/all.parquet                        SRC/train alone, no split name, zstd pages (pyarrow)
  hf-gzip/all.parquet                       the same, gzip pages
  wds/{train-00000{0,1},test-000000}.tar    `webdataset.ShardWriter`: __key__, png, cls;
  wds/classes.txt                           the class names
  wds-one/shard.tar                         SRC/train alone, no split name, no class names
  bad/noimage/x.parquet                     no picture column (plain pyarrow)
  bad/outside/x.parquet                     a label outside the ClassLabel's names
  bad/classes/{train,test}.parquet          splits whose ClassLabels name other classes
  bad/brotli/x.parquet                      brotli pages
  bad/missing/x.parquet                     four rows, then one whose path names no file
  bad/nocls/x.tar                           four samples, then one without a .cls member
"""
import io
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from datasets import ClassLabel, Dataset, Features, Image


def listing(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(os.path.join(root, c, f), k) for k, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(root, c)))]
    return classes, files


def features(classes):
    return Features({"img": Image(), "label": ClassLabel(names=classes)})


def embedded(files, classes):
    rows = {"img": [{"bytes": open(f, "rb").read(), "path": os.path.basename(f)} for f, _ in files],
            "label": [k for _, k in files]}
    return Dataset.from_dict(rows, features=features(classes))


def to_parquet(ds, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A batch size given: without one, datasets stats the files that rows name (relative to
    # the working directory) to choose one.
    ds.to_parquet(path, batch_size=1000, **kwargs)


def shards(files, classes, pattern, count):
    os.makedirs(os.path.dirname(pattern), exist_ok=True)
    per = -(-len(files) // count)
    with wds.ShardWriter(pattern, maxcount=per, verbose=0) as sink:
        for f, k in files:
            stem = os.path.splitext(os.path.basename(f))[0]
            sink.write({"__key__": f"{classes[k]}_{stem}", "png": open(f, "rb").read(), "cls": k})


def main():
    src, out = sys.argv[1], sys.argv[2]
    classes, train = listing(os.path.join(src, "train"))
    test_classes, test = listing(os.path.join(src, "test"))
    assert classes == test_classes

    # Hugging Face: two training shards of embedded pictures, a test shard of paths.
    ds = embedded(train, classes)
    half = (len(train) + 1) // 2
    to_parquet(ds.select(range(half)), f"{out}/hf/data/train-00000-of-00002.parquet")
    to_parquet(ds.select(range(half, len(train))), f"{out}/hf/data/train-00001-of-00002.parquet")
    data = f"{out}/hf/data"
    paths = Dataset.from_dict({"img": [os.path.relpath(f, data) for f, _ in test], "label": [k for _, k in test]},
                              features=features(classes))
    to_parquet(paths, f"{data}/test-00000-of-00001.parquet")
    # The writers' choices that the reader depends on, checked rather than assumed.
    t = pq.read_table(f"{data}/test-00000-of-00001.parquet")
    assert all(b is None for b in t.column("img").combine_chunks().field("bytes").to_pylist()), "test rows hold bytes"
    t = pq.read_table(f"{out}/hf/data/train-00000-of-00002.parquet")
    assert all(b is not None for b in t.column("img").combine_chunks().field("bytes").to_pylist())
    meta = json.loads(t.schema.metadata[b"huggingface"])
    assert meta["info"]["features"]["label"]["names"] == classes, meta
    # datasets writes picture columns uncompressed and the rest with snappy; pyarrow, with its
    # schema's Hugging Face metadata, the other codecs.
    for path, codec in [(f"{out}/hf-one/all.parquet", "zstd"), (f"{out}/hf-gzip/all.parquet", "gzip")]:
        os.makedirs(os.path.dirname(path))
        pq.write_table(ds.data.table, path, compression=codec)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == codec.upper()

    # WebDataset: two training shards and a test shard, names in classes.txt.
    shards(train, classes, f"{out}/wds/train-%06d.tar", 2)
    shards(test, classes, f"{out}/wds/test-%06d.tar", 1)
    with open(f"{out}/wds/classes.txt", "w") as f:
        f.write("\n".join(classes) + "\n")
    shards(train, classes, f"{out}/wds-one/shard-%d.tar", 1)
    os.rename(f"{out}/wds-one/shard-0.tar", f"{out}/wds-one/shard.tar")

    # Bad input.
    few = embedded(train[:2], classes)
    os.makedirs(f"{out}/bad/noimage")
    pq.write_table(pa.table({"name": ["a", "b"], "label": [0, 1]}), f"{out}/bad/noimage/x.parquet")
    table = few.data.table
    outside = table.set_column(1, table.schema.field(1), pa.array([0, len(classes) + 3], pa.int64()))
    os.makedirs(f"{out}/bad/outside")
    pq.write_table(outside, f"{out}/bad/outside/x.parquet")
    to_parquet(few, f"{out}/bad/classes/train.parquet")
    to_parquet(embedded(train[:2], classes[::-1]), f"{out}/bad/classes/test.parquet")
    os.makedirs(f"{out}/bad/brotli")
    pq.write_table(table, f"{out}/bad/brotli/x.parquet", compression="brotli")
    # Four good rows (or samples), then the bad one.
    good = [{"bytes": open(f, "rb").read(), "path": None} for f, _ in train[:4]]
    missing = Dataset.from_dict(
        {"img": good + [{"bytes": None, "path": "gone.png"}], "label": [k for _, k in train[:4]] + [0]},
        features=features(classes))
    to_parquet(missing, f"{out}/bad/missing/x.parquet")
    os.makedirs(f"{out}/bad/nocls")
    with wds.TarWriter(f"{out}/bad/nocls/x.tar") as sink:
        for i, (f, k) in enumerate(train[:4]):
            sink.write({"__key__": f"s{i}", "png": open(f, "rb").read(), "cls": k})
        sink.write({"__key__": "nolabel", "png": open(train[4][0], "rb").read()})

if __name__ == "__main__":
    main()
