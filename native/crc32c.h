/*
 * crc32c.h — CRC-32C (Castagnoli), the checksum of every WAL record and B-tree page.
 *
 * Header-only so that wal.c and btree.pyx share one implementation. The SSE4.2
 * `crc32` instruction is used when the CPU has it (checked once at run time, so
 * one binary runs everywhere); otherwise a slicing-by-8 table does the work.
 * Both paths compute the same function: crc32c("123456789") == 0xE3069283.
 */
#ifndef DYNSTORE_CRC32C_H
#define DYNSTORE_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DS_CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

static uint32_t ds_crc32c_table[8][256];
static int ds_crc32c_mode = -1; /* -1 unknown, 0 table, 1 SSE4.2 */

static void ds_crc32c_init_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ DS_CRC32C_POLY : c >> 1;
        ds_crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = ds_crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = ds_crc32c_table[0][c & 0xFF] ^ (c >> 8);
            ds_crc32c_table[k][n] = c;
        }
    }
}

static uint32_t ds_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = ds_crc32c_table[7][w & 0xFF] ^ ds_crc32c_table[6][(w >> 8) & 0xFF] ^
              ds_crc32c_table[5][(w >> 16) & 0xFF] ^ ds_crc32c_table[4][(w >> 24) & 0xFF] ^
              ds_crc32c_table[3][(w >> 32) & 0xFF] ^ ds_crc32c_table[2][(w >> 40) & 0xFF] ^
              ds_crc32c_table[1][(w >> 48) & 0xFF] ^ ds_crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = ds_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DS_CRC32C_HAVE_HW 1
__attribute__((target("sse4.2"))) static uint32_t ds_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

/* Select the implementation once; safe to call from several threads (idempotent). */
static void ds_crc32c_init(void) {
    if (ds_crc32c_mode >= 0) return;
    ds_crc32c_init_table();
#ifdef DS_CRC32C_HAVE_HW
    __builtin_cpu_init();
    ds_crc32c_mode = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    ds_crc32c_mode = 0;
#endif
}

/* Extend `crc` (0 to start) over n bytes at p. */
static inline uint32_t ds_crc32c(uint32_t crc, const void *p, size_t n) {
    if (ds_crc32c_mode < 0) ds_crc32c_init();
#ifdef DS_CRC32C_HAVE_HW
    if (ds_crc32c_mode == 1) return ds_crc32c_hw(crc, (const uint8_t *)p, n);
#endif
    return ds_crc32c_sw(crc, (const uint8_t *)p, n);
}

/* Force the table path (tests compare both paths); returns the previous mode. */
static inline int ds_crc32c_force_software(int on) {
    if (ds_crc32c_mode < 0) ds_crc32c_init();
    int prev = ds_crc32c_mode;
#ifdef DS_CRC32C_HAVE_HW
    ds_crc32c_mode = on ? 0 : (__builtin_cpu_supports("sse4.2") ? 1 : 0);
#endif
    return prev;
}

#endif /* DYNSTORE_CRC32C_H */
