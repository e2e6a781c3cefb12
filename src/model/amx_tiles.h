// AMX tile configurations shared by the kernels that multiply on tiles
// (amx_bf16.cpp's products, chunk_attention.cpp's scores and P.V).
//
// One layout serves both: tmm0-3 hold C (`rows` rows of 16 f32), tmm4 A
// (`rows` rows of 32 bf16), tmm5-6 B (16 pairs of 16 outputs x 2 bf16; two,
// so a load overlaps a product). A tile of fewer than 16 rows is configured
// with that many, so a kernel never reads or writes rows past its own.
#pragma once

#include <cstdint>

// What a function that runs tile instructions is compiled for.
#define INFERD_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

namespace inferd_amx {

constexpr int64_t kTileRows = 16;  // rows per A and C tile
constexpr int64_t kTileK = 32;     // bf16 inputs per A tile row (16 pairs)

// LDTILECFG's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

inline TileConfig tiles_of(int rows) {
    TileConfig c;
    for (int t = 0; t < 7; ++t) {
        c.rows[t] = static_cast<uint8_t>(t < 5 ? rows : kTileRows);
        c.colsb[t] = 64;
    }
    return c;
}

// Tiles of 1 to 16 rows (index 0 unused).
struct Configs {
    TileConfig of[kTileRows + 1];
    Configs() {
        for (int r = 1; r <= kTileRows; ++r) of[r] = tiles_of(r);
    }
};
inline const Configs kConfigs;

}  // namespace inferd_amx
