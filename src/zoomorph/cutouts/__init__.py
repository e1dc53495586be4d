"""`zoomorph cutouts CATALOGUE --survey legacy|sdss --out DIR`: colour cutouts of catalogue positions from
public cutout services, politely, resumably, with a catalogue beside them that `predict` reads (docs/cutouts.md).

    services.py  the Legacy Survey viewer and SDSS SkyServer: the URL of one cutout, each service's limits
    table.py     the catalogue: read (CSV, Parquet, FITS, VOTable, ECSV), RA/Dec/id columns, safe file
                 names, the copy written beside the cutouts
    fetch.py     the polite client: concurrency, rate limit, retries with backoff, Retry-After, timeout
    valid.py     whether bytes are a whole JPEG or FITS file (kept, or not fetched again)
    download.py  the command: rows -> jobs -> files on disk -> the catalogue with path, status, error

httpx is an optional extra (`pip install 'zoomorph[cutouts]'`), imported only when a request is made.
"""
