"""Records kept by key and dated by their last use: what PathInfo services and result caches store.

Both keep one encoded record per key, refresh a record's date when it is read
(at most once per ``USE_RECORD_INTERVAL``), list every record with its date
for a collector, and evict a record only if it was not used after the date
the collector saw. The services differ only in what a record means; the
three places a record can live are the modules here, each written once:

- ``memory``: a dict, values of any type;
- ``sqlite``: a table of key, data and ``last_used`` in an
  embedded database, listed a page per query so that a slow consumer holds no
  read transaction; a database made before last use was recorded gains the
  column, dated at the upgrade;
- ``objectstore``: one object per key under a prefix, whose
  last-modified time is its last use, refreshed by writing the object again.
  A separate date object would cost a second write and could lag the record,
  letting a collector elsewhere drop a record in use. An eviction checks that
  time right before it deletes, which leaves an instant in which a use goes
  unnoticed (object stores have no conditional delete).
"""
