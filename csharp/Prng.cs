// splitmix64, the counter-based generator behind the ticker's prices and the valuation's orders
// (examples/ticker/PROTOCOL.md, "Prices"): every language recomputes the same numbers from a seed.

/// <summary>splitmix64, on 64-bit unsigned integers modulo 2^64, exactly as the protocols write it.</summary>
static class Prng
{
    // All the arithmetic is on ulong, modulo 2^64: C# wraps unless a checked context says otherwise.
    public const ulong Golden = 0x9E3779B97F4A7C15UL;

    public static ulong SplitMix64(ulong x)
    {
        ulong z = x + Golden;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
