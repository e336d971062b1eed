use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates and frees a few hundred small
/// objects (hyper, wasi-http resources, the store), and glibc's arena locking and chunk
/// consolidation were ~10% of a hello request's CPU. Paired rounds on the 2-core bench VM:
/// hello 90 -> 85 µs of CPU per request (medians of 5), every round faster. Built without
/// transparent huge pages (`no_thp`): with them its eagerly committed arena took 13 MiB more
/// RSS on a node with 1,000 functions; without, 3 MiB more than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ledge::cli::main()
}
