//! Our own client side of each protocol v2sp serves (Shadowsocks today).
pub mod ss;
