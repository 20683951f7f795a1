"""Find the serving budget knob mu for target costs: python calibrate.py router_dir=<train run>/router

    python calibrate.py router_dir=logs/train/runs/<time>/router                      # 25/50/75% of the strongest model's cost
    python calibrate.py router_dir=... target_unit=usd 'targets=[0.0001,0.0002]'    # $ per request

mu is chosen on dev; test reports the achieved cost and accuracy. Writes calibration.{json,csv,md},
budget_curve.csv and budget_curve.png into the Hydra run directory (logs/calibrate/runs/<time>/).
"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("calibrate", __file__)
