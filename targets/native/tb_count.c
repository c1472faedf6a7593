/* tb_count: a qemu-user TCG plugin that counts how often each translated block executes.
 *
 *   qemu-aarch64 -L SYSROOT -plugin ./libtb_count.so,out=COUNTS.txt PROG ARGS...
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few API functions used here are declared
 * below, as in QEMU 7.2's header (plugin API version 1). Each translated block gets one 64-bit
 * counter, incremented by a callback per execution (the inline add of qemu 7.2 crashes the generated
 * code here, Debian 7.2.22); blocks are keyed
 * by (guest address, instruction count, first instruction bytes), so a block translated again (a
 * TB flush, a second vCPU) shares its counter. Where a block's code lives (a file and an offset,
 * for symbols) is read from qemu's own /proc/self/maps when the block is translated: the library
 * may be unloaded before exit.
 *
 * At exit it writes COUNTS.txt:
 *   M <start> <end> <file offset> <path>           one line per file mapping seen (hex)
 *   B <vaddr> <haddr> <n_insns> <count> <bytes>    one line per block: hex addresses, the count in
 *                                                  decimal, each instruction's bytes as hex,
 *                                                  instructions separated by ':'
 * Counters are plain adds: exact at one guest thread, approximate with several running at once.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                                 enum qemu_plugin_cb_flags flags, void *userdata);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern void *qemu_plugin_insn_haddr(const struct qemu_plugin_insn *insn);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

typedef struct Block {
    uint64_t vaddr, haddr, count;
    size_t n_insns, n_bytes;
    unsigned char *bytes;   /* all instructions' bytes, back to back */
    unsigned char *sizes;   /* each instruction's length */
    struct Block *next;     /* hash chain */
} Block;

typedef struct Map {
    uint64_t start, end, offset;
    char *path;
} Map;

#define BUCKETS (1u << 16)
static Block *table[BUCKETS];
static Map *maps;
static size_t n_maps, cap_maps;
static char out_path[4096] = "tb_counts.txt";

static int mapped(uint64_t haddr) {
    for (size_t i = 0; i < n_maps; ++i)
        if (haddr >= maps[i].start && haddr < maps[i].end) return 1;
    return 0;
}

/* Add every file mapping of /proc/self/maps not seen yet (called when a block's host address is
 * outside all known mappings: the first block of each newly loaded library). */
static void read_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        uint64_t start, end, offset;
        char perms[8], path[4096] = "";
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %*s %*s %4095[^\n]", &start, &end, perms, &offset,
                   path) < 4)
            continue;
        if (path[0] != '/') continue; /* guest code is mapped without host exec permission */
        int known = 0;
        for (size_t i = 0; i < n_maps; ++i)
            if (maps[i].start == start && maps[i].end == end && strcmp(maps[i].path, path) == 0) known = 1;
        if (known) continue;
        if (n_maps == cap_maps) {
            cap_maps = cap_maps ? 2 * cap_maps : 64;
            maps = realloc(maps, cap_maps * sizeof *maps);
        }
        maps[n_maps++] = (Map){start, end, offset, strdup(path)};
    }
    fclose(f);
}

static void on_exec(unsigned int vcpu, void *block) {
    (void)vcpu;
    ((Block *)block)->count++;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0) return;
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    unsigned char sizes[512], bytes[8192];
    size_t total = 0, kept = n < sizeof sizes ? n : sizeof sizes;
    for (size_t i = 0; i < kept; ++i) {
        const struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t len = qemu_plugin_insn_size(insn);
        if (total + len > sizeof bytes) { kept = i; break; }
        memcpy(bytes + total, qemu_plugin_insn_data(insn), len);
        sizes[i] = (unsigned char)len;
        total += len;
    }
    uint64_t h = (vaddr * 0x9E3779B97F4A7C15ull) ^ (n * 0xC2B2AE3D27D4EB4Full);
    Block **slot = &table[(h >> 20) & (BUCKETS - 1)];
    Block *b;
    for (b = *slot; b; b = b->next)
        if (b->vaddr == vaddr && b->n_insns == n && b->n_bytes == total && memcmp(b->bytes, bytes, total) == 0) break;
    if (!b) {
        b = calloc(1, sizeof *b);
        b->vaddr = vaddr;
        b->n_insns = n;
        b->n_bytes = total;
        b->bytes = malloc(total ? total : 1);
        b->sizes = malloc(kept ? kept : 1);
        memcpy(b->bytes, bytes, total);
        memcpy(b->sizes, sizes, kept);
        b->haddr = (uint64_t)(uintptr_t)qemu_plugin_insn_haddr(qemu_plugin_tb_get_insn(tb, 0));
        if (!mapped(b->haddr)) read_maps();
        b->next = *slot;
        *slot = b;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (size_t i = 0; i < n_maps; ++i)
        fprintf(f, "M %" PRIx64 " %" PRIx64 " %" PRIx64 " %s\n", maps[i].start, maps[i].end, maps[i].offset, maps[i].path);
    for (size_t s = 0; s < BUCKETS; ++s) {
        for (Block *b = table[s]; b; b = b->next) {
            if (b->count == 0) continue;
            fprintf(f, "B %" PRIx64 " %" PRIx64 " %zu %" PRIu64 " ", b->vaddr, b->haddr, b->n_insns, b->count);
            size_t at = 0;
            for (size_t i = 0; at < b->n_bytes; ++i) {
                if (i) fputc(':', f);
                for (size_t j = 0; j < b->sizes[i]; ++j) fprintf(f, "%02x", b->bytes[at + j]);
                at += b->sizes[i];
            }
            fputc('\n', f);
        }
    }
    if (fclose(f) == 0) rename(tmp, out_path);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                                int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; ++i)
        if (strncmp(argv[i], "out=", 4) == 0) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
