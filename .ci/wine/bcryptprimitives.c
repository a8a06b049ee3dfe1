/* A stand-in for bcryptprimitives.dll, which Wine 8 lacks.
 *
 * Rust's std (>= 1.78) on Windows imports bcryptprimitives.dll!ProcessPrng for its random numbers
 * (HashMap seeds, tempfile names). Wine 8 has no such DLL, so every Rust test binary fails to load.
 * This shim implements ProcessPrng on top of BCryptGenRandom, which Wine does have. It is built by
 * .ci/wine-test with MinGW into the test Wine prefix only; it never ships.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
