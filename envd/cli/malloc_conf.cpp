// The envd executable's memory allocator: jemalloc (linked in its CMakeLists), with this
// configuration compiled in. jemalloc reads it at its first allocation; MALLOC_CONF in the
// environment still overrides it option by option.
//
// Why: the first touch of each 4 KiB page of new memory costs 12-20 us on the VMs we measure on
// (a trap to the hypervisor per page), against about 0.2 us to rewrite a page already touched.
// A warm snapshot of a 46,500-file prefix touches about 60 MB of new heap, 14,700 pages: that
// was about a third of its CPU time. glibc's malloc backs its heaps with transparent huge pages
// only when a tunable is set in the environment before the process starts; jemalloc takes the
// setting from here.
// - thp:always: jemalloc asks for transparent huge pages (madvise) on the memory it maps, so a
//   fault maps 2 MiB. Page faults of that snapshot: 14,700 -> about 1,000; `envd push` with no
//   change: 0.48-0.53 s -> 0.30-0.31 s; a cold `envd node pull`: 2.4-2.6 s -> 2.1-2.3 s.
// - narenas:1: one arena for all threads (each keeps its own small cache), so that huge pages
//   are not partly used in many arenas: peak RSS of a cold `envd push` to the embedded builder
//   stays at about 190 MB (its target is 200 MB; with one arena per core it was 220 MB).
// Where the kernel's THP setting is "never", the first option has no effect.
extern "C" {
// The name and type jemalloc looks for.
const char* malloc_conf = "thp:always,narenas:1";
}
