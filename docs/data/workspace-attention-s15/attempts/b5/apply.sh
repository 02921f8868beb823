grep -q '_SCHEDULES' kernel.py || exit 1
sed -i 's/heapq.heappush(free, (at + triton.cdiv(hi, block_n) + 1, p))/heapq.heappush(free, (at + triton.cdiv(hi, block_n) + 3, p))/' kernel.py && grep -q 'block_n) + 3, p))' kernel.py
