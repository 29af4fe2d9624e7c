//! Shadowsocks AEAD-2017 and 2022 (sans-IO).
