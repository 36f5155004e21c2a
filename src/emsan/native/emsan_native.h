/* Declarations shared by the cffi cdef and the C sources (plain C, no preprocessor). */
typedef struct emsan_api {
    void *uc_reg_read;      /* uc_err uc_reg_read(uc_engine *, int, void *) */
    void *uc_reg_write;     /* uc_err uc_reg_write(uc_engine *, int, const void *) */
    void *uc_mem_read;      /* uc_err uc_mem_read(uc_engine *, uint64_t, void *, size_t) */
    void *uc_mem_write;     /* uc_err uc_mem_write(uc_engine *, uint64_t, const void *, size_t) */
    void *uc_emu_stop;      /* uc_err uc_emu_stop(uc_engine *) */
    void *uc_hook_add;      /* uc_err uc_hook_add(uc_engine *, size_t *, int, void *, void *, uint64_t, uint64_t, ...) */
    void *uc_ctl;           /* uc_err uc_ctl(uc_engine *, int, ...) */
} emsan_api;

void emsan_set_api(const emsan_api *api);
int emsan_hook_add(void *uc, size_t *hh, int type, void *cb, void *ud, uint64_t begin, uint64_t end);

/* Counting hook used by the benchmarks: one increment per executed instruction. */
void emsan_count_insn_cb(void *uc, uint64_t address, uint32_t size, void *ud);
