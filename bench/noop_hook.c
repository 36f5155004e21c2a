/* Native memory hooks for bench/probe.py (built by bench/kasan.py into build/host/libnoop_hook.so).
 * bench_noop_mem_cb does nothing, for the `emsan-memhook` target: what Unicorn itself costs when
 * every guest load and store calls a native hook (the floor under any per-access check).
 * Same signature as the generic check of a memory hook (generic_access_cb, src/emsan/native/generic.c). */
#include <stdint.h>

void bench_noop_mem_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)uc; (void)type; (void)addr; (void)size; (void)value; (void)ud;
}

/* The same signature, counting: one increment of *(uint64_t *)ud per load or store (probe.py's
 * count-mem mode, untimed). */
void bench_count_mem_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)uc; (void)type; (void)addr; (void)size; (void)value;
    ++*(uint64_t *)ud;
}
