sed -i 's/NUM_STAGES=[0-9]/NUM_STAGES=3/' kernel.py && grep -q 'NUM_STAGES=3' kernel.py
