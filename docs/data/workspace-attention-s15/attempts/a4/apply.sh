sed -i 's/HEAD_GROUP_WAVES=[0-9]/HEAD_GROUP_WAVES=2/' kernel.py && grep -q 'HEAD_GROUP_WAVES=2' kernel.py
