# Sourced by the device scripts: puts NVRTC and NCCL on the library path (cubecl-cuda dlopens
# them; libcuda stays the system's: the toolkit's compat/libcuda.so.1 does not match the driver)
# and unpacks the xz-packed CUDA padt-train of .gpu/bin to /tmp/padt-train.
for lib in libnvrtc.so libnccl.so.2; do
  found=$(find /usr/local /usr/lib /usr/lib64 /opt \( -name "$lib" -o -name "$lib.*" \) 2>/dev/null | head -1)
  echo "lib $lib: ${found:-not found}"
  [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# (python's lzma: xz itself may not be installed there)
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/bin/padt-train.xz'), open('/tmp/padt-train', 'wb'))" \
  && chmod +x /tmp/padt-train
