"""The input layer, shared by `prepare` and `predict`: where images come from and how one is decoded.

    sources.py     a source (a path, archive.zip::member, or an Unusable entry with its reason);
                   the one folder walker, zip listing, reading a source's bytes
    catalogues.py  catalogues, a chunk at a time: the path column, other columns exact (CSV / Parquet)
    tables.py      FITS tables, VOTable, ECSV, HDF5 through astropy, with units and descriptions
    ids.py         the id of a file (its name as written) and join_key, the form ids are matched in
    inputs.py      the inputs a user gives -> one ordered listing (id, path, error, catalogue columns)
    decode.py      sources -> cropped, resized RGB uint8 (DCT-draft JPEG, 16-bit, FITS); load_many, decode_batch;
                   the field of view (Fov: Kaggle pixels or "auto", each galaxy's own extent)
    extent.py      the central galaxy's centre, R90 and sky, measured from its pixels, compiled (--fov auto)
    fits.py        FITS cutouts -> RGB (the Lupton asinh stretch)

Nothing here imports torch: decoding worker processes start from it.
"""
