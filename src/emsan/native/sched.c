/* The time slice of emsan's thread scheduler (os/linux/threads.py): a UC_HOOK_BLOCK callback that
 * counts the blocks a guest thread runs and stops the engine at the start of the block that
 * begins once its slice is used up, where the PC is exact (see emsan_tick_cb). Counting in C at
 * block starts keeps the schedule deterministic (it depends on the guest's own control flow,
 * never on wall time) and keeps Python out of the per-block path. slice[0]: blocks left;
 * slice[1]: set when the slice ran out. Installed only while more than one thread exists. */
#include "runtime.h"

/* The thread the scheduler switched to: allocation and free records carry it (os/linux/threads.py). */
EXPORT void emsan_set_tid(emsan_runtime *rt, uint32_t tid) { rt->tid = tid; }

EXPORT void emsan_slice_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)address; (void)size;
    int64_t *slice = ud;
    if (UNLIKELY(--slice[0] <= 0)) {
        slice[1] = 1;
        emu_stop(uc);
    }
}
