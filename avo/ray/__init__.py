"""`avo evolve --backend ray` (docs/distributed.md): the driver (driver.py) schedules operator and
evaluator actors (actors.py) against a lineage-store actor (store.py) on a cluster it joins or
starts (cluster.py). The store records attempts through avo/evolve/, as the local loop does."""
