/* The quarantine: freed objects stay poisoned in a FIFO bounded in bytes before their memory
 * is reused, so a use-after-free is caught as long as the object is in here. */
#include "kasan.h"

void quarantine_put(kasan_t *k, uint64_t handle, uint64_t bytes)
{
    if (k->q_len == k->q_cap) {
        size_t ncap = k->q_cap ? k->q_cap * 2 : 1024;
        uint64_t *nq = malloc(ncap * sizeof *nq);
        if (!nq) {                           /* no room to remember it: reusable at once */
            out_of("host memory for the quarantine");
            emu_stop(k->rt->uc);
            release_object(k, handle);
            return;
        }
        for (size_t i = 0; i < k->q_len; i++) nq[i] = k->q[(k->q_head + i) % k->q_cap];
        free(k->q);
        k->q = nq; k->q_cap = ncap; k->q_head = 0;
    }
    k->q[(k->q_head + k->q_len) % k->q_cap] = handle;
    k->q_len++;
    k->q_bytes += bytes;
    while (k->q_bytes > k->q_limit && k->q_len) {
        uint64_t old = k->q[k->q_head];
        k->q_head = (k->q_head + 1) % k->q_cap;
        k->q_len--;
        k->q_bytes -= slab_of(k, old)->slot;
        release_object(k, old);
    }
}
