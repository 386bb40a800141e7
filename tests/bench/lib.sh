# Shell helpers shared by the benchmarks (sourced, not run).

# add_pip_package PREFIX NAME: a pip package NAME 1.0 of about 100 KB laid out as pip does
# (module dir with five 20 KB data files and __init__.py, dist-info with METADATA, INSTALLER and
# RECORD) in PREFIX's site-packages; prints its size in bytes on disk.
add_pip_package() {
  local site prefix=$1 name=$2
  site=$(ls -d "$prefix"/lib/python3.*/site-packages | head -1)
  mkdir -p "$site/$name" "$site/$name-1.0.dist-info"
  for i in 0 1 2 3 4; do head -c 20000 /dev/urandom > "$site/$name/data$i.bin"; done
  echo "NAME = '$name'" > "$site/$name/__init__.py"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n\n' "$name" > "$site/$name-1.0.dist-info/METADATA"
  echo pip > "$site/$name-1.0.dist-info/INSTALLER"
  (cd "$site" && { for f in "$name"/* "$name-1.0.dist-info"/METADATA "$name-1.0.dist-info"/INSTALLER; do
     echo "$f,,"; done; echo "$name-1.0.dist-info/RECORD,,"; } > "$name-1.0.dist-info/RECORD")
  du -cb "$site/$name" "$site/$name-1.0.dist-info" | tail -1 | cut -f1
}
