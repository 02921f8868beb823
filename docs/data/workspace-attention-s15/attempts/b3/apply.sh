sed -i 's/BLOCK_N=128/BLOCK_N=64/' kernel.py && grep -q 'BLOCK_N=64' kernel.py
