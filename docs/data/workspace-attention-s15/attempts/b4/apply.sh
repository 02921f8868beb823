sed -i 's/PERSISTENT=True/PERSISTENT=False/' kernel.py && grep -q 'PERSISTENT=False' kernel.py
