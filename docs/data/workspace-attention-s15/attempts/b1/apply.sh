git apply --3way "$D/patch.diff"
