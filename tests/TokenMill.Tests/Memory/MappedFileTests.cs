using TokenMill.Memory;

namespace TokenMill.Tests.Memory;

/// <summary>
/// <see cref="MappedFile.Release"/>: the pages of a live mapping go back to the kernel and read back as the file's bytes;
/// memory that is not a mapping (the process's own) is never released, whatever its contents.
/// </summary>
public unsafe class MappedFileTests
{
    [Fact]
    public void Released_pages_read_back_as_the_files_bytes_and_other_memory_is_left_alone()
    {
        string path = Path.GetTempFileName();
        try
        {
            int page = Environment.SystemPageSize;
            var bytes = new byte[5 * page + 123];
            new Random(7).NextBytes(bytes);
            File.WriteAllBytes(path, bytes);
            using (var file = MappedFile.Open(path, bytes.Length))
            {
                var mapped = new ReadOnlySpan<byte>(file.Pointer, bytes.Length);
                Assert.True(mapped.SequenceEqual(bytes)); // every page touched
                Assert.Equal(OperatingSystem.IsLinux(), MappedFile.Release(file.Pointer + 1000, 3 * page));
                Assert.True(mapped.SequenceEqual(bytes), "a released page must fault back in with the file's bytes");
                Assert.False(MappedFile.Release(file.Pointer + page, bytes.Length), "a range past the mapping's end is not released");
                Assert.False(MappedFile.Release(file.Pointer, 0));
            }

            using var own = new NativeBuffer(5L * page, zero: true);
            var mine = new Span<byte>(own.Pointer, (int)own.ByteCount);
            mine.Fill(0x5A);
            Assert.False(MappedFile.Release(own.Pointer, own.ByteCount), "the process's own memory is not a mapping");
            Assert.True(mine.IndexOfAnyExcept((byte)0x5A) < 0, "memory that is not a mapping must keep its contents");
        }
        finally
        {
            File.Delete(path);
        }
    }
}
