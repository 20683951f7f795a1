"""Train a router: python train.py router=<name> lambda=<x>   (sweeps: python train.py -m router=a,b lambda=0,inf)"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("train", __file__)
