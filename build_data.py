"""Build a routing benchmark from VLMEvalKit logs (data=vlrb), a records table (data=records) or the
generated demo (data=demo, the default), and extract features (stage=features).

    python build_data.py                              # generate + build the demo benchmark
    python build_data.py data=demo_full               # the demo at the paper's scale (30,540 x 17)
    python build_data.py data=vlrb data.raw_dir=W data.tsv_dir=LMUData
    python build_data.py stage=features encoder=default
"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("build", __file__)
